from flask_wtf import FlaskForm
from wtforms import BooleanField, IntegerField, PasswordField, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional


class AddServerForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=200)])
    host = StringField("Host (IP address or host name)", validators=[DataRequired(), Length(max=255)])
    ssh_port = IntegerField("SSH port", default=22, validators=[DataRequired(), NumberRange(1, 65535)])
    # Never rendered back into the page (PasswordField), never stored: it goes to the daemon's memory.
    root_password = PasswordField("Root password", validators=[DataRequired(), Length(max=1024)])
    ips = TextAreaField("Source IP addresses, one per line: IP or IP=HELO", validators=[DataRequired()])


class HeloForm(FlaskForm):
    """The HELO name one source IP greets with (pushed to the agent, no Ansible run)."""

    helo = StringField("HELO name", validators=[DataRequired(), Length(max=253)])


class IpUseForm(FlaskForm):
    """One source IP's share of the server's letters and whether it gets any (the panel's own choice:
    nothing is pushed to the agent)."""

    weight = IntegerField("Weight", validators=[InputRequired(), NumberRange(1, 100)])
    active = BooleanField("Active")


class RateLimitForm(FlaskForm):
    """At most so many letters a minute from a source IP ("*": each) to a recipient domain ("*": each)."""

    source_ip = SelectField("From source IP", default="*", validate_choice=True)
    domain = StringField("To recipient domain", default="*", validators=[DataRequired(), Length(max=253)])
    per_minute = IntegerField("Letters per minute", validators=[InputRequired(), NumberRange(1, 1_000_000)])

    def __init__(self, server, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.source_ip.choices = [("*", "every source IP")] + [(ip.ip, ip.ip) for ip in server.ips]


class ProviderLimitForm(FlaskForm):
    """Limits from a source IP ("*": each) to a mailbox provider ("*": each); an empty number is no limit of that kind."""

    source_ip = SelectField("From source IP", default="*", validate_choice=True)
    provider = StringField("To provider", validators=[DataRequired(), Length(max=253)])
    per_minute = IntegerField("Letters per minute", validators=[Optional(), NumberRange(1, 1_000_000)])
    per_hour = IntegerField("Letters per hour", validators=[Optional(), NumberRange(1, 60_000_000)])
    connections = IntegerField("Concurrent connections", validators=[Optional(), NumberRange(1, 1000)])
    per_connection = IntegerField("Letters per connection", validators=[Optional(), NumberRange(1, 100_000)])

    def __init__(self, server, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.source_ip.choices = [("*", "every source IP")] + [(ip.ip, ip.ip) for ip in server.ips]


class ProviderTableForm(FlaskForm):
    """The server's provider table, one provider a line: ``name: MX host suffix, …``."""

    table = TextAreaField("Provider table", validators=[Length(max=100_000)])
