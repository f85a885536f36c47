"""Mailfleet worker agent: the program on each sending server.

It takes campaign batches from the panel (``api``), keeps them in a SQLite queue
(``queue``), renders each letter (``render``, ``mime``), submits it to the local Exim
(``sender``, ``smtp_submit``), follows Exim's main log for outcomes (``exim_log``) and
collects bounces Exim pipes to it (``bounce_intake``, ``bounce_spool``).
"""

__version__ = "0.1.0"
