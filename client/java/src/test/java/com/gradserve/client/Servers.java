package com.gradserve.client;

import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * The gradserve servers the tests call: `gradserve serve` subprocesses from the repository's
 * .venv on ports they pick, started once per test run when first needed and stopped (SIGTERM)
 * when the JVM exits. The conformance server's flags come from conformance/cases.json; the TLS
 * servers use certificates made by tests/certs.py.
 */
final class Servers {
  /** The repository's root (the pom passes it as the system property gradserve.root). */
  static final Path ROOT =
      Path.of(System.getProperty("gradserve.root", "../..")).toAbsolutePath().normalize();

  static final Path CASES = ROOT.resolve("conformance").resolve("cases.json");
  static final String MTLS_TOKEN = "mtls-token";

  private static final Pattern SERVING = Pattern.compile("serving on [\\d.]+:(\\d+)");
  private static final List<Served> RUNNING = new ArrayList<>();
  private static Served conformance;
  private static Served tls;
  private static Served mtls;
  private static Served smallBudget;
  private static Certificates certificates;

  static {
    Runtime.getRuntime().addShutdownHook(new Thread(Servers::stopAll));
  }

  private Servers() {}

  /** The conformance suite's server (plaintext, a bearer token, one process). */
  static synchronized Served conformance() {
    if (conformance == null) {
      JsonObject server = suite().getAsJsonObject("server");
      List<String> flags = new ArrayList<>();
      server.getAsJsonArray("flags").forEach(flag -> flags.add(flag.getAsString()));
      String plugin = ROOT.resolve("conformance").resolve(server.get("pythonpath").getAsString())
          .toString();
      conformance = start(Map.of("PYTHONPATH", plugin), flags, server.get("token").getAsString());
    }
    return conformance;
  }

  /** A TLS server (no token) with the certificates' server pair. */
  static synchronized Served tls() {
    if (tls == null) {
      tls = start(Map.of(), tlsFlags(), null);
    }
    return tls;
  }

  /** A mutual-TLS server that also requires {@link #MTLS_TOKEN}. */
  static synchronized Served mtls() {
    if (mtls == null) {
      List<String> flags = tlsFlags();
      flags.addAll(
          List.of(
              "--tls-client-ca", certificates().ca().toString(), "--auth-token", MTLS_TOKEN));
      mtls = start(Map.of(), flags, MTLS_TOKEN);
    }
    return mtls;
  }

  /** A plaintext server whose memory budget is 1 MiB: big graphs get a QuotaFailure. */
  static synchronized Served smallBudget() {
    if (smallBudget == null) {
      smallBudget =
          start(
              Map.of(),
              new ArrayList<>(
                  List.of("--workers", "1", "--isolation-workers", "0", "--max-memory-mb", "1")),
              null);
    }
    return smallBudget;
  }

  private static List<String> tlsFlags() {
    Certificates certs = certificates();
    return new ArrayList<>(
        List.of(
            "--workers", "1", "--isolation-workers", "0",
            "--tls-cert", certs.serverCert().toString(),
            "--tls-key", certs.serverKey().toString()));
  }

  /** The suite's cases.json. */
  static JsonObject suite() {
    try {
      return JsonParser.parseString(Files.readString(CASES)).getAsJsonObject();
    } catch (IOException error) {
      throw new IllegalStateException("cannot read " + CASES, error);
    }
  }

  /** The gradserve command: the system property gradserve.executable, else the .venv's. */
  static String executable() {
    String given = System.getProperty("gradserve.executable", "");
    return given.isEmpty() ? ROOT.resolve(".venv/bin/gradserve").toString() : given;
  }

  /** A CA, a server pair for localhost and a client pair, made by tests/certs.py. */
  record Certificates(Path directory) {
    Path ca() {
      return directory.resolve("ca.crt");
    }

    Path serverCert() {
      return directory.resolve("server.crt");
    }

    Path serverKey() {
      return directory.resolve("server.key");
    }

    File clientCert() {
      return directory.resolve("client.crt").toFile();
    }

    File clientKey() {
      return directory.resolve("client.key").toFile();
    }
  }

  static synchronized Certificates certificates() {
    if (certificates == null) {
      try {
        Path directory = Files.createTempDirectory("gradserve-certs");
        directory.toFile().deleteOnExit();
        String python = Path.of(executable()).resolveSibling("python").toString();
        String script =
            "import sys; from pathlib import Path; sys.path.insert(0, 'tests'); "
                + "from certs import make_certificates; make_certificates(Path(sys.argv[1]))";
        Process made =
            new ProcessBuilder(python, "-c", script, directory.toString())
                .directory(ROOT.toFile())
                .redirectErrorStream(true)
                .start();
        String output = new String(made.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        if (made.waitFor() != 0) {
          throw new IllegalStateException("tests/certs.py failed:\n" + output);
        }
        for (File file : directory.toFile().listFiles()) {
          file.deleteOnExit();
        }
        certificates = new Certificates(directory);
      } catch (IOException error) {
        throw new IllegalStateException("cannot make certificates", error);
      } catch (InterruptedException interrupted) {
        Thread.currentThread().interrupt();
        throw new IllegalStateException(interrupted);
      }
    }
    return certificates;
  }

  /** A running `gradserve serve`: its port, its token (or null) and its log. */
  static final class Served {
    private final Process process;
    private final StringBuffer log = new StringBuffer();
    private final String token;
    private int port;

    private Served(Process process, String token) {
      this.process = process;
      this.token = token;
    }

    int port() {
      return port;
    }

    /** "127.0.0.1:PORT" for plaintext servers. */
    String target() {
      return "127.0.0.1:" + port;
    }

    /** "localhost:PORT", the name in the TLS server's certificate. */
    String tlsTarget() {
      return "localhost:" + port;
    }

    String token() {
      return token;
    }

    String log() {
      return log.toString();
    }

    private void stop() {
      process.destroy();
      try {
        if (!process.waitFor(15, TimeUnit.SECONDS)) {
          process.destroyForcibly();
        }
      } catch (InterruptedException interrupted) {
        process.destroyForcibly();
        Thread.currentThread().interrupt();
      }
    }
  }

  private static Served start(Map<String, String> env, List<String> flags, String token) {
    List<String> command = new ArrayList<>(List.of(executable(), "serve", "--port", "0"));
    command.addAll(flags);
    ProcessBuilder builder = new ProcessBuilder(command).redirectErrorStream(true);
    builder.environment().putAll(env);
    Served served;
    try {
      served = new Served(builder.start(), token);
    } catch (IOException error) {
      throw new IllegalStateException(
          "cannot run " + executable() + " (make the .venv with `python3 -m uv sync`, or set "
              + "-Dgradserve.executable): " + error.getMessage(), error);
    }
    RUNNING.add(served);
    Thread reader = new Thread(() -> collect(served), "gradserve log");
    reader.setDaemon(true);
    reader.start();
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
    while (System.nanoTime() < deadline) {
      Matcher match = SERVING.matcher(served.log());
      if (match.find()) {
        served.port = Integer.parseInt(match.group(1));
        return served;
      }
      if (!served.process.isAlive()) {
        break;
      }
      try {
        Thread.sleep(50);
      } catch (InterruptedException interrupted) {
        Thread.currentThread().interrupt();
        break;
      }
    }
    served.stop();
    throw new IllegalStateException(
        "gradserve serve " + String.join(" ", flags) + " did not start:\n" + served.log());
  }

  private static void collect(Served served) {
    try (BufferedReader lines =
        new BufferedReader(
            new InputStreamReader(served.process.getInputStream(), StandardCharsets.UTF_8))) {
      for (String line = lines.readLine(); line != null; line = lines.readLine()) {
        served.log.append(line).append('\n');
      }
    } catch (IOException closed) {
      // The server stopped; its log is complete.
    }
  }

  private static synchronized void stopAll() {
    RUNNING.forEach(Served::stop);
  }
}
