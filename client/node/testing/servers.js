// Servers for the tests: one started here (`uv run gradserve serve --port 0`, or
// "$GRADSERVE_BIN serve --port 0"), and the ones tests/test_node_client.py starts and names in
// the environment (the conformance server, TLS and mutual-TLS servers).
import { spawn } from "node:child_process";
import { once } from "node:events";

/** Start a server; resolves to {child, target, stop()}. */
export async function startServer() {
  const [command, ...args] = process.env.GRADSERVE_BIN ? [process.env.GRADSERVE_BIN] : ["uv", "run", "gradserve"];
  const child = spawn(command, [...args, "serve", "--port", "0", "--workers", "1"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  for await (const data of child.stderr) {
    log += data;
    const match = log.match(/serving on ([\d.]+:\d+)/);
    if (match) {
      child.stderr.resume(); // keep draining the server's log
      const stop = async () => {
        if (child.exitCode === null) {
          child.kill("SIGTERM");
          await once(child, "exit");
        }
      };
      return { child, target: match[1], stop };
    }
  }
  throw new Error(`the server did not start:\n${log}`);
}

/** The environment variable's value, or undefined (then the test using it is skipped). */
export function fromEnv(name) {
  return process.env[name] || undefined;
}

/** Skip reason when any of `names` is unset (the test then needs tests/test_node_client.py). */
export function needs(...names) {
  const missing = names.filter((name) => !process.env[name]);
  return missing.length ? `${missing.join(", ")} not set: run through tests/test_node_client.py` : false;
}
