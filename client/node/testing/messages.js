// Run by tests/test_client_messages.py: each case of GRADSERVE_MESSAGE_CASES is called
// here, and its error's message printed (one JSON line) for the Python test to compare with
// the Python and Go clients' messages.
import { Client, Graph } from "../gradserve.js";

const cases = JSON.parse(process.env.GRADSERVE_MESSAGE_CASES);
for (const c of cases) {
  const options = { timeoutMs: c.timeout_s * 1000, tls: c.tls, ca: c.ca || undefined };
  if (c.cert) Object.assign(options, { cert: c.cert, key: c.key });
  const client = new Client(c.target, options);
  try {
    if (c.chain) {
      const g = new Graph();
      let node = g.leaf(0.5);
      for (let i = 0; i < c.chain; i++) node = node.tanh();
      await client.backward(node);
    } else {
      await client.listOps();
    }
    console.log(JSON.stringify([c.name, null, false]));
  } catch (error) {
    console.log(JSON.stringify([c.name, error.message, error.auth]));
  } finally {
    client.close();
  }
}
