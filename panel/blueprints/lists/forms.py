from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import BooleanField, StringField
from wtforms.validators import DataRequired, Length


class NewListForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=200)])


class ImportForm(FlaskForm):
    file = FileField("CSV file", validators=[FileRequired("Choose a CSV file to upload.")])
    check_mx = BooleanField("Check that each address's domain takes mail (an MX or A record; slower)")
    all_or_nothing = BooleanField("Import nothing if any row is rejected")
