from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import StringField
from wtforms.validators import DataRequired, Length


class AddSuppressionForm(FlaskForm):
    email = StringField("Address", validators=[DataRequired("Give the address to suppress."), Length(max=320)])


class ImportSuppressionsForm(FlaskForm):
    file = FileField("File of addresses (CSV with an email column, text, ZIP or RAR)",
                     validators=[FileRequired("Choose a file to upload.")])
