"""``unreachable.explain``: C-core's words for an UNAVAILABLE call, and whether the channel
uses TLS, say which of the module's causes it was. The real failures against real servers
are in test_sdk_messages; here each cause's words are given alone and beside others, so that
one cause is never taken for another."""

import pytest

from gradserve.client import unreachable as u

TARGET = "db.example:50051"
FAILED = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:10.0.0.1:50051: "


WRONG_VERSION = FAILED + "Ssl handshake failed: WRONG_VERSION_NUMBER"
NOT_TRUSTED = FAILED + "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate"


@pytest.mark.parametrize(
    ("details", "tls", "message", "auth"),
    [
        (FAILED + "Connection refused", False, u.NO_SERVER, False),
        (FAILED + "Connection refused", True, u.NO_SERVER, False),
        ("DNS resolution failed for db.example:50051", True, u.NO_SERVER, False),
        ("errors resolving db.example: Name or service not known", False, u.NO_SERVER, False),
        (FAILED + "Socket closed", False, u.SERVER_WANTS_TLS, False),
        (FAILED + "Socket closed", True, u.SERVER_WANTS_CERTIFICATE, True),
        (WRONG_VERSION, True, u.SERVER_WANTS_PLAINTEXT, False),
        (NOT_TRUSTED, True, u.SERVER_NOT_TRUSTED, False),
    ],
)
def test_each_cause_s_words_give_its_message(details, tls, message, auth):
    assert u.explain(details, TARGET, tls) == (message.format(target=TARGET), auth)


@pytest.mark.parametrize(
    ("details", "tls"),
    [
        # A connection that was up and then closed: no handshake was refused.
        ("Socket closed", False),
        ("Socket closed", True),
        # TLS words on a plaintext channel are no TLS cause.
        (WRONG_VERSION, False),
        (NOT_TRUSTED, False),
        ("GOAWAY received", False),
        ("GOAWAY received", True),
    ],
)
def test_words_of_no_cause_are_said_as_they_are(details, tls):
    expected = f"the server at {TARGET} is unavailable: {details}"
    assert u.explain(details, TARGET, tls) == (expected, False)
