#!/usr/bin/env python3
"""Send one message through the proxy with Python's smtplib and STARTTLS.

usage: smtplib_send.py HOST PORT TLS_NAME CAFILE

Verifies the chain against CAFILE and the name TLS_NAME (also sent as SNI).
The message has dot-leading lines and 8-bit content; the exact bytes it
should arrive as (CRLF line ends, dots unstuffed) are written to a file
whose path is printed as `sent-file PATH`.
"""
import smtplib
import ssl
import sys
import tempfile

host, port, name, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

body = (
    "Subject: smtplib through starttls-proxy\r\n"
    "From: sender@client.test\r\n"
    "To: rcpt@example.test\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    ".a line starting with a dot\r\n"
    "..two dots\r\n"
    ".\r\n"  # would end DATA if not stuffed
    "Grüße aus Köln — ünïcödé\r\n"
).encode("utf-8") + b"latin-1 byte \xe9\xff\r\nlast line\r\n"

ctx = ssl.create_default_context(cafile=cafile)
s = smtplib.SMTP(host, port, local_hostname="client.test", timeout=20)
s._host = name  # SNI and name check against this
s.starttls(context=ctx)
print("tls", s.sock.version())
refused = s.sendmail("sender@client.test", ["rcpt@example.test"], body, mail_options=["BODY=8BITMIME"])
assert not refused, refused
s.quit()

with tempfile.NamedTemporaryFile(delete=False, suffix=".eml") as f:
    f.write(body)
    print("sent-file", f.name)
