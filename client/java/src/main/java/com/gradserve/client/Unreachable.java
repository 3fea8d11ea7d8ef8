package com.gradserve.client;

import io.grpc.Status;
import java.net.ConnectException;
import java.net.UnknownHostException;
import java.security.cert.CertPathBuilderException;
import java.security.cert.CertificateException;
import java.util.ArrayList;
import java.util.List;

/**
 * Why no call got through to the server (UNAVAILABLE), said in one line with what to do, in
 * the same words as the Python SDK (gradserve.client.unreachable) and the other clients.
 *
 * <p>grpc-java tells the causes apart by the exception under the status, and by whether the
 * client's channel uses TLS: nothing listens (a refused connection, an unknown host); a
 * plaintext client on a TLS port or a TLS client without the client certificate a mutual-TLS
 * server requires (the server closes the connection: "Network closed for unknown reason"); a
 * TLS client on a plaintext port (not a TLS record); a server certificate the client does not
 * trust (no certification path).
 */
final class Unreachable {
  static final String NO_SERVER =
      "no gradserve server answers at %s: start one with `gradserve serve`, "
          + "or set GRADSERVE_TARGET";
  static final String SERVER_WANTS_TLS =
      "the server at %s expects TLS and this client connects in plaintext: "
          + "give the client the CA certificate that signed the server's";
  static final String SERVER_WANTS_PLAINTEXT =
      "the server at %s speaks plaintext and this client connects with TLS: "
          + "connect without TLS, or start the server with --tls-cert and --tls-key";
  static final String SERVER_WANTS_CERTIFICATE =
      "the server at %s refused the TLS connection: it requires a client certificate "
          + "signed by a CA it trusts (mutual TLS): give the client its certificate and key";
  static final String SERVER_NOT_TRUSTED =
      "the server at %s presented a certificate this client does not trust: "
          + "give the client the CA certificate that signed it";

  private static final String CLOSED = "Network closed for unknown reason";

  private Unreachable() {}

  /**
   * The message for an UNAVAILABLE status, and whether the server refused the client's TLS
   * identity (an authentication problem rather than a server that is not there).
   */
  record Explanation(String message, boolean refusedIdentity) {}

  static Explanation explain(Status status, String target, boolean tls) {
    if (causedBy(status, ConnectException.class)
        || causedBy(status, UnknownHostException.class)
        || firstLine(status).startsWith("Unable to resolve host")) {
      return new Explanation(String.format(NO_SERVER, target), false);
    }
    if (tls && causedByName(status, "NotSslRecordException")) {
      return new Explanation(String.format(SERVER_WANTS_PLAINTEXT, target), false);
    }
    if (tls
        && (causedBy(status, CertPathBuilderException.class)
            || causedBy(status, CertificateException.class))) {
      return new Explanation(String.format(SERVER_NOT_TRUSTED, target), false);
    }
    if (status.getCause() == null && firstLine(status).equals(CLOSED)) {
      return tls
          ? new Explanation(String.format(SERVER_WANTS_CERTIFICATE, target), true)
          : new Explanation(String.format(SERVER_WANTS_TLS, target), false);
    }
    return new Explanation(
        "the server at " + target + " is unavailable: " + firstLine(status), false);
  }

  /**
   * The status's description up to its first line break (grpc-java appends Netty's pipeline
   * on the next lines).
   */
  static String firstLine(Status status) {
    String description = status.getDescription() == null ? "" : status.getDescription();
    int end = description.indexOf('\n');
    return end < 0 ? description : description.substring(0, end);
  }

  private static boolean causedBy(Status status, Class<? extends Throwable> kind) {
    return causes(status).stream().anyMatch(kind::isInstance);
  }

  /** For exceptions of the shaded Netty, whose classes are not part of the API. */
  private static boolean causedByName(Status status, String simpleName) {
    return causes(status).stream().anyMatch(c -> c.getClass().getSimpleName().equals(simpleName));
  }

  /** The status's cause and the causes under it (at most 16: a chain may loop). */
  private static List<Throwable> causes(Status status) {
    List<Throwable> chain = new ArrayList<>();
    for (Throwable cause = status.getCause(); cause != null && chain.size() < 16; ) {
      chain.add(cause);
      cause = cause.getCause();
    }
    return chain;
  }
}
