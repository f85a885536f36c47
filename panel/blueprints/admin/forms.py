from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, IntegerField
from wtforms.validators import DataRequired, NumberRange, Optional


class NewUserForm(FlaskForm):
    email = EmailField("E-mail", validators=[DataRequired(message="Give the new user's e-mail address.")])
    is_admin = BooleanField("Admin (manages users, quotas, shared servers, the audit log)")


class QuotaField(IntegerField):
    """A whole number from 0, or empty for no limit; anything else says so in words."""

    def __init__(self, label: str, **kwargs) -> None:
        kwargs.setdefault("validators", [Optional(), NumberRange(
            min=0, max=2**31 - 1, message="Give a whole number, 0 or more, or leave it empty for no limit.")])
        super().__init__(label, **kwargs)

    def process_formdata(self, valuelist):
        try:
            super().process_formdata(valuelist)
        except ValueError:
            self.data = None
            raise ValueError("Give a whole number, 0 or more, or leave it empty for no limit.") from None


class QuotaForm(FlaskForm):
    letters_per_day = QuotaField("Letters a day")
    letters_per_month = QuotaField("Letters a month")
    recipients = QuotaField("Recipients stored")
    lists = QuotaField("Lists")
    running_campaigns = QuotaField("Campaigns running at once")
