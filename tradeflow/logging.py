"""A log filter that masks secrets that may ride in URLs or messages (webhook API keys, tokens)."""

import logging
import re

# Account webhook keys look like tf_<43 urlsafe chars>; API tokens tfp_<...>; both can appear in paths.
_SECRET_RE = re.compile(r"\b(tfp?_[A-Za-z0-9_\-]{6})[A-Za-z0-9_\-]{12,}")


def redact(text: str) -> str:
    return _SECRET_RE.sub(r"\1…", text)


class RedactSecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
