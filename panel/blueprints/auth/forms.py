from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, IntegerField, PasswordField, RadioField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, EqualTo, Length, NumberRange, Optional

from ...services.users import MAX_TOKEN_LIFETIME, MIN_PASSWORD_LENGTH


class LoginForm(FlaskForm):
    email = EmailField("E-mail", validators=[DataRequired()])
    password = PasswordField("Password", validators=[DataRequired()])
    remember = BooleanField("Keep me logged in")


class PasswordForm(FlaskForm):
    current_password = PasswordField("Current password", validators=[DataRequired()])
    new_password = PasswordField("New password", validators=[
        DataRequired(), Length(min=MIN_PASSWORD_LENGTH, message=f"Use at least {MIN_PASSWORD_LENGTH} characters.")])
    confirm = PasswordField("New password again", validators=[
        DataRequired(), EqualTo("new_password", message="The two new passwords do not match.")])


class DaysField(IntegerField):
    """A whole number of days; anything else says so in words."""

    def process_formdata(self, valuelist):
        try:
            super().process_formdata(valuelist)
        except ValueError:
            self.data = None
            raise ValueError("Give the days as a whole number, or leave it empty.") from None


class TokenForm(FlaskForm):
    name = StringField("Name", validators=[
        DataRequired(), Length(max=100, message="A name can be at most 100 characters long.")])
    scope = RadioField("Access", default="write", choices=[
        SelectChoice("write", "Read and write"), SelectChoice("read", "Read only (GET)")])
    expires_days = DaysField("Expires after (days)", validators=[
        Optional(), NumberRange(min=1, max=MAX_TOKEN_LIFETIME.days,
                                message=f"Give a number of days from 1 to {MAX_TOKEN_LIFETIME.days}, or leave it empty.")])
