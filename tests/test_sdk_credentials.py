"""``channel_credentials``' refusals of settings that cannot go together, said before any
call (the TLS cases that connect are in test_sdk_messages and test_security_tls)."""

import grpc
import pytest

from gradserve.client.security import channel_credentials


@pytest.mark.parametrize(
    "half",
    [{"cert_file": "client.pem"}, {"key_file": "client.key"}],
)
def test_a_client_certificate_without_its_key_or_a_key_alone_is_refused(half):
    with pytest.raises(ValueError, match="cert_file and key_file go together"):
        channel_credentials(**half)


@pytest.mark.parametrize(
    "tls_files",
    [
        {"ca_file": "ca.pem"},
        {"cert_file": "client.pem", "key_file": "client.key"},
        {"ca_file": "ca.pem", "cert_file": "client.pem", "key_file": "client.key"},
    ],
)
def test_local_credentials_with_tls_files_are_refused(tls_files):
    with pytest.raises(ValueError, match="local=True means no TLS"):
        channel_credentials(local=True, **tls_files)


def test_the_settings_that_go_together_give_channel_credentials(tmp_path):
    """No file is read for local credentials, nor without a CA (the system's roots)."""
    assert isinstance(channel_credentials(local=True), grpc.ChannelCredentials)
    assert isinstance(channel_credentials(local=True, token="t"), grpc.ChannelCredentials)
    assert isinstance(channel_credentials(), grpc.ChannelCredentials)
    assert isinstance(channel_credentials(token="t"), grpc.ChannelCredentials)
    with pytest.raises(FileNotFoundError):  # a CA named is read
        channel_credentials(ca_file=tmp_path / "missing.pem")
