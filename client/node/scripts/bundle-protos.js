// npm pack's prepack (and postpack, with --remove): the published package carries the
// .proto files it loads and the retry policy beside them (service_config.json), in protos/ beside gradserve.js; in the repository gradserve.js reads
// them from the repository's protos/ folder instead, so the copy lives only while packing.
import { cpSync, rmSync, statSync } from "node:fs";
import { fileURLToPath } from "node:url";

const bundled = fileURLToPath(new URL("../protos", import.meta.url));
rmSync(bundled, { recursive: true, force: true });
if (process.argv[2] !== "--remove") {
  const source = fileURLToPath(new URL("../../../protos/gradserve", import.meta.url));
  cpSync(source, `${bundled}/gradserve`, {
    recursive: true,
    filter: (path) =>
      statSync(path).isDirectory() || path.endsWith(".proto") || path.endsWith("service_config.json"),
  });
}
