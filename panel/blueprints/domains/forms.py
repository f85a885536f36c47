from flask_wtf import FlaskForm
from wtforms import BooleanField, IntegerField, PasswordField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from ...models import DMARC_POLICIES, TSIG_ALGORITHMS


class AddDomainForm(FlaskForm):
    name = StringField("Domain", validators=[DataRequired(), Length(max=253)])
    kind = SelectField("Kind", choices=[SelectChoice("sending", "sending (From addresses, bounces, DKIM)"),
                                        SelectChoice("tracking", "tracking (masked links)")], default="sending")
    zone = StringField("DNS zone (empty: the domain itself)", validators=[Optional(), Length(max=253)])
    dns_host = StringField("Authoritative DNS server (IP or host name)", validators=[DataRequired(), Length(max=255)])
    dns_port = IntegerField("Port", default=53, validators=[DataRequired(), NumberRange(1, 65535)])
    tsig_name = StringField("TSIG key name", validators=[DataRequired(), Length(max=255)])
    tsig_algorithm = SelectField("TSIG algorithm", choices=[SelectChoice(a, a) for a in TSIG_ALGORITHMS], default="hmac-sha256")
    # Never rendered back into the page (PasswordField); stored sealed.
    tsig_secret = PasswordField("TSIG secret (base64)", validators=[DataRequired(), Length(max=1024)])
    dkim_selector = StringField("DKIM selector", default="mailfleet", validators=[DataRequired(), Length(max=63)])
    dmarc_policy = SelectField("DMARC policy", choices=[SelectChoice(p, p) for p in DMARC_POLICIES], default="none")
    dmarc_rua = StringField("DMARC reports to (empty: your address)", validators=[Optional(), Length(max=320)])


class DeleteDomainForm(FlaskForm):
    keep_records = BooleanField("Leave the records on the DNS server (when it no longer takes our updates)")
