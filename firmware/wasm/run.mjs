// Runs the HIL fixture firmware under the real MicroPython VM (the WebAssembly port from npm).
//
// Writes firmware/fixture/*.py (as the package /lib/fixture) and firmware/host/*.py (the fake
// `machine` module and the self-test) into the VM's filesystem, then runs
// `selftest.main()`: Modbus requests in, replies checked, commands, edges, and no allocation
// on the UART path. Prints the VM's output; exits 0 only when it ends with "SELFTEST OK".
//
// Usage: node firmware/wasm/run.mjs [--heapsize BYTES]
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const here = dirname(fileURLToPath(import.meta.url));
const firmware = join(here, "..");
const heapArg = process.argv.indexOf("--heapsize");
// The Pico has about 190 kB of heap for MicroPython: run in the same order of size.
const heapsize = heapArg > 0 ? Number(process.argv[heapArg + 1]) : 192 * 1024;

const lines = [];
const print = (line) => {
  lines.push(line);
  process.stdout.write(line + "\n");
};
const mp = await loadMicroPython({ heapsize, stdout: print, stderr: (l) => print("stderr: " + l) });

function copyTree(from, to) {
  mp.FS.mkdirTree(to);
  for (const name of readdirSync(from).sort()) {
    if (name.endsWith(".py")) {
      mp.FS.writeFile(join(to, name), readFileSync(join(from, name), "utf8"));
    }
  }
}
copyTree(join(firmware, "fixture"), "/lib/fixture");
copyTree(join(firmware, "host"), "/lib");

let ok = false;
try {
  mp.runPython("import sys\nsys.path.append('/lib')\nimport selftest\nselftest.main()\n");
  ok = lines.length > 0 && lines[lines.length - 1].startsWith("SELFTEST OK");
} catch (error) {
  print(`python error: ${error.type ?? ""} ${error.message}`);
}
process.exit(ok ? 0 : 1);
