// TLS: serving (optionally mutual), dialling peers, the CLI flags, and the
// startup errors of bad TLS options. The certificates are made per run with
// the openssl command line in a temporary folder.
import { strict as assert } from "node:assert";
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { HealthCheckResponse_ServingStatus as ServingStatus } from "@ravi-mesh/contract/grpc/health/v1/health_pb";
import * as v1 from "@ravi-mesh/contract/grpc/reflection/v1/reflection_pb";
import { EchoSchema, EchoedSchema } from "@ravi-mesh/contract/ravi/conformance/v1/conformance_pb";

import { registerConformance } from "../src/agents/conformance.js";
import { RaviNode } from "../src/node.js";
import { clientTlsMaterial } from "../src/tls.js";
import { Code, Fixture, rejectsWith } from "../test-support/helpers.js";

const T = { timeout: 30_000 };
const CLI = join(dirname(fileURLToPath(import.meta.url)), "..", "src", "cli.js");
const conformance = { type: "conformance", key: "k" };

interface Certificates {
  dir: string;
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** A second CA, which signed nothing the node trusts. */
  otherCa: string;
}

function openssl(dir: string, args: string[]): void {
  execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"], timeout: 20_000 });
}

/** A throwaway CA, a server certificate for 127.0.0.1 and localhost, and a client certificate. */
function makeCertificates(): Certificates {
  const dir = mkdtempSync(join(tmpdir(), "ravi-node-tls-"));
  const key = (name: string): void => openssl(dir, ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", `${name}.key`]);
  const selfSigned = (name: string): void => {
    key(name);
    openssl(dir, ["req", "-x509", "-new", "-key", `${name}.key`, "-subj", `/CN=${name}`, "-days", "2", "-out", `${name}.pem`]);
  };
  const signed = (name: string, extensions: string): void => {
    key(name);
    openssl(dir, ["req", "-new", "-key", `${name}.key`, "-subj", `/CN=${name}`, "-out", `${name}.csr`]);
    writeFileSync(join(dir, `${name}.ext`), extensions);
    openssl(dir, [
      "x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
      "-days", "2", "-extfile", `${name}.ext`, "-out", `${name}.pem`,
    ]);
  };
  selfSigned("ca");
  selfSigned("other-ca");
  signed("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
  signed("client", "extendedKeyUsage=clientAuth\n");
  const at = (name: string): string => join(dir, name);
  return {
    dir,
    ca: at("ca.pem"),
    serverCert: at("server.pem"),
    serverKey: at("server.key"),
    clientCert: at("client.pem"),
    clientKey: at("client.key"),
    otherCa: at("other-ca.pem"),
  };
}

let certs: Certificates;
before(() => {
  certs = makeCertificates();
});
after(() => rmSync(certs.dir, { recursive: true, force: true }));

describe("serving TLS", T, () => {
  const fx = new Fixture();
  after(() => fx.close());

  test("a client trusting the CA is answered; health and reflection are on the TLS listener too", async () => {
    const node = await fx.started({ nodeId: "tls", tls: { certFile: certs.serverCert, keyFile: certs.serverKey } }, (n) =>
      registerConformance(n),
    );
    const client = fx.client(node.address, { tls: { caFile: certs.ca } });
    assert.equal((await client.describe()).nodeId, "tls");
    assert.equal(await client.checkHealth(""), ServingStatus.SERVING);
    const echoed = await client.call(conformance, EchoSchema, { text: "over tls" }, EchoedSchema);
    assert.equal(echoed.text, "over tls");

    // connect-node's own transport options (nodeOptions) dial the listener as well.
    const transport = createGrpcTransport({ baseUrl: `https://${node.address}`, nodeOptions: { ca: readFileSync(certs.ca) } });
    const reflection = createClient(v1.ServerReflection, transport);
    const names: string[] = [];
    for await (const response of reflection.serverReflectionInfo(
      (async function* () {
        yield { host: "", messageRequest: { case: "listServices" as const, value: "" } };
      })(),
      { timeoutMs: 5_000 },
    )) {
      if (response.messageResponse.case === "listServicesResponse") {
        names.push(...response.messageResponse.value.service.map((s) => s.name));
      }
    }
    assert.deepEqual(names.sort(), [
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection",
      "ravi.mesh.v1.AgentService",
    ]);
  });

  test("a cleartext client fails at once, one not trusting the CA is UNAVAILABLE; the node keeps serving", async () => {
    const node = await fx.started({ nodeId: "tls-only", tls: { certFile: certs.serverCert, keyFile: certs.serverKey } });
    // The server closes the connection on the cleartext preface; connect-node
    // reports the stream closed under it as CANCELED (observed, not ravi's choice).
    const started = Date.now();
    await rejectsWith(fx.client(node.address, { timeoutMs: 3_000 }).describe(), Code.Canceled);
    assert.ok(Date.now() - started < 2_000, "the cleartext call failed at once, not at its deadline");
    await rejectsWith(fx.client(node.address, { tls: { caFile: certs.otherCa } }).describe(), Code.Unavailable);
    assert.equal((await fx.client(node.address, { tls: { caFile: certs.ca } }).describe()).nodeId, "tls-only");
  });

  test("the server name: the dialled IP, an expected DNS name it carries, not one it lacks", async () => {
    const node = await fx.started({ nodeId: "named", tls: { certFile: certs.serverCert, keyFile: certs.serverKey } });
    const named = fx.client(node.address, { tls: { caFile: certs.ca, serverName: "localhost" } });
    assert.equal((await named.describe()).nodeId, "named");
    const wrong = fx.client(node.address, { tls: { caFile: certs.ca, serverName: "elsewhere.example" } });
    const error = await rejectsWith(wrong.describe(), Code.Unavailable);
    assert.match(error.message, /elsewhere\.example/);
  });
});

describe("mutual TLS", T, () => {
  const fx = new Fixture();
  after(() => fx.close());

  const mtls = (): { certFile: string; keyFile: string; clientCaFile: string } => ({
    certFile: certs.serverCert,
    keyFile: certs.serverKey,
    clientCaFile: certs.ca,
  });

  test("a client without a certificate is refused, one with a certificate is answered", async () => {
    const node = await fx.started({ nodeId: "mtls", tls: mtls() }, (n) => registerConformance(n));
    await rejectsWith(fx.client(node.address, { tls: { caFile: certs.ca } }).describe(), Code.Unavailable);
    const withCert = fx.client(node.address, { tls: { caFile: certs.ca, certFile: certs.clientCert, keyFile: certs.clientKey } });
    const reply = await withCert.send(conformance, EchoSchema, { text: "x" });
    assert.equal(reply.nodeId, "mtls");
  });

  test("a node dials its peers with TLS and a client certificate", async () => {
    const b = await fx.started({ nodeId: "mtls-b", tls: mtls() }, (n) => registerConformance(n));
    const peerTls = { caFile: certs.ca, certFile: certs.clientCert, keyFile: certs.clientKey };
    const a = await fx.started({ nodeId: "mtls-a", tls: mtls(), peerTls, peers: { b: b.address } });
    await a.waitForRoute("conformance", { nodeId: "mtls-b" });
    const reply = await fx.client(a.address, { tls: peerTls }).send(conformance, EchoSchema, { text: "x" });
    assert.equal(reply.nodeId, "mtls-b");
    // A node without a client certificate never gets a route to it.
    const c = await fx.started({ nodeId: "mtls-c", peerTls: { caFile: certs.ca }, peers: { b: b.address } });
    await rejectsWith(c.waitForRoute("conformance", { nodeId: "mtls-b", timeoutMs: 1_000 }), Code.DeadlineExceeded);
  });
});

describe("bad TLS options", T, () => {
  test("missing files and a certificate without its key fail when the node or client is made", () => {
    assert.throws(
      () => new RaviNode({ nodeId: "bad", tls: { certFile: join(certs.dir, "missing.pem"), keyFile: certs.serverKey } }),
      /cannot read the certificate file/,
    );
    assert.throws(
      () => new RaviNode({ nodeId: "bad", tls: { certFile: certs.serverCert, keyFile: certs.clientKey } }),
      /not usable/,
    );
    assert.throws(() => clientTlsMaterial({ caFile: certs.ca, certFile: certs.clientCert }), /needs its key/);
  });
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe("ravi-node TLS flags", T, () => {
  test("a certificate without its key, or an unreadable file, is one line on stderr and exit 2", async () => {
    const base = ["node", "--listen", "127.0.0.1:0", "--node-id", "cli-bad"];
    const noKey = await run([...base, "--tls-cert", certs.serverCert]);
    assert.equal(noKey.code, 2);
    assert.equal(noKey.stderr, "ravi-node node: --tls-cert needs --tls-key\n");
    const clientCa = await run([...base, "--tls-client-ca", certs.ca]);
    assert.equal(clientCa.code, 2);
    assert.equal(clientCa.stderr, "ravi-node node: --tls-client-ca needs --tls-cert\n");
    const peerKey = await run([...base, "--peer-tls-ca", certs.ca, "--peer-tls-key", certs.clientKey]);
    assert.equal(peerKey.code, 2);
    assert.equal(peerKey.stderr, "ravi-node node: --peer-tls-key needs --peer-tls-cert\n");
    const missing = await run([...base, "--tls-cert", join(certs.dir, "missing.pem"), "--tls-key", certs.serverKey]);
    // A node that cannot start: one line and exit 2, as the Python and Go nodes.
    assert.equal(missing.code, 2);
    assert.equal(missing.stderr.trimEnd().split("\n").length, 1, missing.stderr);
    assert.match(missing.stderr, /^ravi-node node: TLS: cannot read the certificate file ".*missing\.pem"/);
  });

  test("a node started with --tls-cert/--tls-key answers describe --tls-ca, not a cleartext describe", async () => {
    const child = spawn(
      process.execPath,
      [CLI, "node", "--listen", "127.0.0.1:0", "--node-id", "cli-tls", "--tls-cert", certs.serverCert, "--tls-key", certs.serverKey],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    try {
      const address = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("the node did not start")), 10_000);
        child.on("exit", (code) => reject(new Error(`the node exited with ${code}`)));
        createInterface({ input: child.stdout! }).once("line", (line) => {
          clearTimeout(timer);
          resolve(line.split(" ").pop() ?? "");
        });
      });
      const described = await run(["describe", "--addr", address, "--tls-ca", certs.ca, "--timeout-ms", "5000"]);
      assert.equal(described.code, 0, described.stderr);
      assert.equal((JSON.parse(described.stdout) as { nodeId: string }).nodeId, "cli-tls");
      const cleartext = await run(["describe", "--addr", address, "--timeout-ms", "3000"]);
      assert.equal(cleartext.code, 1);
      // The TLS listener drops the cleartext client: cancelled or reset, by timing.
      assert.match(cleartext.stderr, /^ravi-node describe: (CANCELED|ABORTED)/);
    } finally {
      child.removeAllListeners("exit");
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(timer);
    }
  });
});
