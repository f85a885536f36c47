#!/usr/bin/python3
"""Run on the test host: submit one letter to the local Exim as the agent does; print the outcome as JSON.

    submit_letter.py SOURCE_IP MAIL_FROM RCPT_TO
"""

import json
import re
import smtplib
import sys
from email.message import EmailMessage


def main() -> int:
    source_ip, mail_from, rcpt_to = sys.argv[1:4]
    letter = EmailMessage()
    letter["From"] = "News <news@example.test>"
    letter["To"] = rcpt_to
    letter["Subject"] = "molecule test letter"
    letter["X-Mailfleet-Source-IP"] = source_ip
    letter.set_content("Hello from the molecule verify step.\n")
    try:
        with smtplib.SMTP("127.0.0.1", 25, local_hostname="agent.localhost", timeout=30) as smtp:
            smtp.send_message(letter, from_addr=mail_from, to_addrs=[rcpt_to])
    except smtplib.SMTPResponseException as exc:
        # A multi-line reply: one line, each continuation's enhanced status code dropped.
        message = re.sub(r"\n(\d\.\d{1,3}\.\d{1,3} )?", " ", exc.smtp_error.decode(errors="replace"))
        print(json.dumps({"accepted": False, "code": exc.smtp_code, "message": message}))
        return 0
    print(json.dumps({"accepted": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
