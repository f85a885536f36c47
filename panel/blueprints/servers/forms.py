from flask_wtf import FlaskForm
from wtforms import IntegerField, PasswordField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, NumberRange


class AddServerForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=200)])
    host = StringField("Host (IP address or host name)", validators=[DataRequired(), Length(max=255)])
    ssh_port = IntegerField("SSH port", default=22, validators=[DataRequired(), NumberRange(1, 65535)])
    # Never rendered back into the page (PasswordField), never stored: it goes to the daemon's memory.
    root_password = PasswordField("Root password", validators=[DataRequired(), Length(max=1024)])
    ips = TextAreaField("Source IP addresses, one per line: IP or IP=HELO", validators=[DataRequired()])
