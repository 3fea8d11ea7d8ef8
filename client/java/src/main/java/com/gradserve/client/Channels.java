package com.gradserve.client;

import io.grpc.ChannelCredentials;
import io.grpc.ClientInterceptor;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.TlsChannelCredentials;
import java.io.File;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.List;

/**
 * Where every channel is made: plaintext or TLS, the message limit, the caller's
 * interceptors. Channel-wide policy (a service config with a retry policy, say) belongs here.
 */
final class Channels {
  private Channels() {}

  /**
   * What a channel is made from: the caller's own credentials, or plaintext, or TLS from PEM
   * files (null when not given).
   */
  record Settings(
      String target,
      ChannelCredentials credentials,
      boolean tls,
      File caFile,
      File certFile,
      File keyFile,
      int maxMessageBytes,
      List<ClientInterceptor> interceptors) {}

  static ManagedChannel open(Settings settings) {
    return Grpc.newChannelBuilder(settings.target(), credentials(settings))
        .maxInboundMessageSize(settings.maxMessageBytes())
        .intercept(settings.interceptors())
        .build();
  }

  private static ChannelCredentials credentials(Settings settings) {
    if (settings.credentials() != null) {
      return settings.credentials();
    }
    if (!settings.tls()) {
      return InsecureChannelCredentials.create();
    }
    TlsChannelCredentials.Builder tls = TlsChannelCredentials.newBuilder();
    try {
      if (settings.caFile() != null) {
        tls.trustManager(settings.caFile());
      }
      if (settings.certFile() != null) {
        tls.keyManager(settings.certFile(), settings.keyFile());
      }
    } catch (IOException | IllegalArgumentException error) {
      throw new UncheckedIOException(
          new IOException("cannot read the TLS files: " + error.getMessage(), error));
    }
    return tls.build();
  }
}
