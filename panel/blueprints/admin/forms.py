from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField
from wtforms.validators import DataRequired


class NewUserForm(FlaskForm):
    email = EmailField("E-mail", validators=[DataRequired(message="Give the new user's e-mail address.")])
    is_admin = BooleanField("Admin (manages users, quotas, shared servers, the audit log)")
