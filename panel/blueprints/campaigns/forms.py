from flask_wtf import FlaskForm
from wtforms import BooleanField, RadioField, SelectField, SelectMultipleField, StringField, TextAreaField, widgets
from wtforms.fields import DateField, TimeField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, Optional

from ...models import ENCODINGS
from ...models.campaign import DEFAULT_PRIORITY, PRIORITIES
from ...services.schedule import DEFAULT_ZONE, zone_names

FORMATS = [
    SelectChoice("plain", "Plain text"),
    SelectChoice("html", "HTML"),
    SelectChoice("multipart", "Both (multipart/alternative)"),
]
ENCODING_LABELS = {"7bit": "7bit (plain ASCII)", "quoted-printable": "Quoted-printable", "base64": "Base64"}


PRIORITY_LABELS = {PRIORITIES[0]: "lowest", DEFAULT_PRIORITY: "default", PRIORITIES[-1]: "highest"}
PRIORITY_HINT = ("a campaign's share of each server among your running campaigns; your campaigns together share "
                 "evenly with other users'")


def _whole_number(value: object) -> object:
    """The posted priority as a number if it is one; services.campaigns.check_priority says what is wrong."""
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return value


def priority_field() -> SelectField:
    return SelectField("Priority", coerce=_whole_number, validate_choice=False, default=DEFAULT_PRIORITY,
                       choices=[SelectChoice(n, f"{n} ({PRIORITY_LABELS[n]})" if n in PRIORITY_LABELS else str(n))
                                for n in PRIORITIES])


class MultiCheckboxField(SelectMultipleField):
    widget = widgets.ListWidget(prefix_label=False)
    option_widget = widgets.CheckboxInput()


class CampaignForm(FlaskForm):
    name = StringField("Campaign name", validators=[DataRequired(), Length(max=200)])
    subject = StringField("Subject", validators=[DataRequired(), Length(max=998)])
    from_email = StringField("From address", validators=[DataRequired(), Length(max=320)])
    from_name = StringField("From name", validators=[Optional(), Length(max=200)])
    reply_to = StringField("Reply-To address", validators=[Optional(), Length(max=320)])
    format = RadioField("Format", choices=FORMATS, default="plain")
    text = TextAreaField("Text body")
    html = TextAreaField("HTML body")
    encoding = SelectField(
        "Transfer encoding", choices=[SelectChoice(e, ENCODING_LABELS[e]) for e in ENCODINGS], default="quoted-printable"
    )
    lists = SelectMultipleField("Send to lists", coerce=int)
    exclude_lists = SelectMultipleField("Exclude lists", coerce=int)
    servers = MultiCheckboxField("Send through servers", coerce=int)
    source_ips = MultiCheckboxField("Only from these source IPs", coerce=int)
    domains = MultiCheckboxField("Send for domains (letters rotate through them)", coerce=int)
    track_clicks = BooleanField("Mask the links and count clicks", default=True)
    track_opens = BooleanField("Count opens (a 1×1 image in the HTML part)", default=False)
    tracking_domains = MultiCheckboxField("Masked links on tracking domains (letters take turns)", coerce=int)
    priority = priority_field()
    # A scheduled start on the wall clock of a zone (compose.js picks the browser's zone for a new one).
    schedule = BooleanField("Start at a set time", default=False)
    schedule_date = DateField("Date", validators=[Optional()])
    schedule_time = TimeField("Time", validators=[Optional()])
    schedule_zone = SelectField("Time zone", default=DEFAULT_ZONE)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.schedule_zone.choices = zone_names()

    def set_choices(self, lists, servers, domains=()) -> None:
        list_choices = [SelectChoice(item.id, f"{item.name} ({item.recipient_count:,})") for item in lists]
        self.lists.choices = list_choices
        self.exclude_lists.choices = list_choices
        self.servers.choices = [SelectChoice(item.id, f"{item.name} ({item.host})") for item in servers]
        self.source_ips.choices = [SelectChoice(ip.id, f"{ip.ip} on {item.name}") for item in servers for ip in item.ips]
        self.domains.choices = [SelectChoice(item.id, f"{item.name} (bounces to {item.bounce_domain})")
                                for item in domains if item.kind == "sending"]
        self.tracking_domains.choices = [SelectChoice(item.id, item.name) for item in domains if item.kind == "tracking"]

    def validate(self, extra_validators=None) -> bool:
        ok = super().validate(extra_validators)
        fmt = self.format.data
        if fmt in ("plain", "multipart") and not (self.text.data or "").strip():
            self.text.errors.append("Write the text body.")
            ok = False
        if fmt in ("html", "multipart") and not (self.html.data or "").strip():
            self.html.errors.append("Write the HTML body.")
            ok = False
        if self.schedule.data:
            for part, what in ((self.schedule_date, "date"), (self.schedule_time, "time")):
                if part.data is None and not part.errors:
                    part.errors.append(f"Give the {what} to start at, or untick “Start at a set time”.")
                    ok = False
        return ok

    def bodies(self) -> tuple[str | None, str | None]:
        """The text and HTML bodies the chosen format keeps."""
        fmt = self.format.data
        return (self.text.data if fmt != "html" else None, self.html.data if fmt != "plain" else None)


class PriorityForm(FlaskForm):
    """A campaign's priority, changed on its page (while it runs, too)."""

    priority = priority_field()


class TestSendForm(FlaskForm):
    """Up to five addresses a test of the campaign goes to (checked by services/test_sends.py)."""

    addresses = StringField("Send a test to", validators=[Optional()])


class PreviewForm(FlaskForm):
    class Meta:
        csrf = False  # a GET that changes nothing

    email = StringField("Preview for", validators=[Optional()])
