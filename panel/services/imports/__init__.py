"""Reading list files for import: what kind of file (sources), how its text reads (text), the
optional MX check (mx), the rejected rows' report (report) and background import jobs (jobs).
The rows themselves are checked and stored by services/csv_import.py."""
