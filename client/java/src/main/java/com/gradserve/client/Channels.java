package com.gradserve.client;

import io.grpc.ChannelCredentials;
import io.grpc.ClientInterceptor;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.TlsChannelCredentials;
import com.google.gson.Gson;
import com.google.gson.reflect.TypeToken;
import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.Reader;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;

/**
 * Where every channel is made: plaintext or TLS, the message limit, the caller's
 * interceptors, and the retry policy every gradserve client shares.
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

  /**
   * gRPC's service config for every gradserve client (protos/gradserve/v1/service_config.json,
   * in the jar): retry UNAVAILABLE with backoff, since every call is a pure function of its
   * request.
   */
  static final Map<String, ?> SERVICE_CONFIG = readServiceConfig();

  static ManagedChannel open(Settings settings) {
    return Grpc.newChannelBuilder(settings.target(), credentials(settings))
        .maxInboundMessageSize(settings.maxMessageBytes())
        .defaultServiceConfig(SERVICE_CONFIG)
        .enableRetry()
        // gRPC retries only a request it still holds: 1 MiB of one by default.
        .perRpcBufferLimit(settings.maxMessageBytes())
        .retryBufferSize(Math.max(16L << 20, settings.maxMessageBytes()))
        .intercept(settings.interceptors())
        .build();
  }

  private static Map<String, ?> readServiceConfig() {
    try (InputStream json = Channels.class.getResourceAsStream("service_config.json")) {
      if (json == null) {
        throw new IllegalStateException("service_config.json is missing from the jar");
      }
      Reader reader = new InputStreamReader(json, StandardCharsets.UTF_8);
      Map<String, ?> config = new Gson().fromJson(reader, new TypeToken<Map<String, ?>>() {}.getType());
      return config;
    } catch (IOException error) {
      throw new UncheckedIOException(error);
    }
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
