// TLS of the Node member: the serving side (http2.createSecureServer, with
// optional client certificates: mutual TLS) and the dialling side (a TLS
// socket with ALPN "h2" under connect-node's HTTP/2 session manager). The
// options mean what the Python `ravi node` flags mean (docs/deploy.md, "TLS
// between pods"): PEM files, read once when the node or client is created.
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { readFileSync } from "node:fs";
import * as net from "node:net";
import * as tls from "node:tls";

import { RaviError } from "./errors.js";

/** Serve TLS (`--tls-cert`, `--tls-key`, `--tls-client-ca`). */
export interface ServerTlsOptions {
  /** The PEM certificate chain the node serves. */
  certFile: string;
  /** The PEM private key of that certificate. */
  keyFile: string;
  /**
   * A PEM CA: when set, every client must present a certificate signed by it
   * (mutual TLS); a client without one is refused during the handshake.
   */
  clientCaFile?: string | undefined;
}

/**
 * Dial with TLS (`--peer-tls-*` for peers, `--tls-ca` for the CLI's client
 * commands). Each PEM may be given as a file or as its contents; the contents
 * win when both are set.
 */
export interface ClientTlsOptions {
  /** The PEM CA that signs the servers' certificates (default: Node's built-in roots). */
  caFile?: string | undefined;
  /** The PEM client certificate chain to present (mutual TLS); needs a key. */
  certFile?: string | undefined;
  /** The PEM private key of the client certificate. */
  keyFile?: string | undefined;
  /** The CA as PEM text. */
  ca?: string | Buffer | undefined;
  /** The client certificate chain as PEM text. */
  cert?: string | Buffer | undefined;
  /** The client key as PEM text. */
  key?: string | Buffer | undefined;
  /**
   * The name the server certificate must carry when it is not the dialled
   * host (for example peers dialled by IP whose certificates name a DNS name).
   */
  serverName?: string | undefined;
}

/** The PEM material of a TLS client, read and checked. */
export interface ClientTlsMaterial {
  readonly ca: string | Buffer | undefined;
  readonly cert: string | Buffer | undefined;
  readonly key: string | Buffer | undefined;
  readonly serverName: string | undefined;
}

function invalid(message: string): RaviError {
  return new RaviError(Code.InvalidArgument, `TLS: ${message}`);
}

function readPem(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw invalid(`cannot read the ${what} ${JSON.stringify(path)}: ${reason}`);
  }
}

function secureContext(options: tls.SecureContextOptions, what: string): void {
  try {
    tls.createSecureContext(options);
  } catch (error) {
    throw invalid(`${what}: ${error instanceof Error ? error.message : String(error)}`);
  }
}

/** Reads and checks the files of a TLS server: the options of `http2.createSecureServer`. */
export function serverTlsOptions(options: ServerTlsOptions): tls.TlsOptions {
  if (options.certFile === "" || options.keyFile === "") {
    throw invalid("a TLS server needs both a certificate file and a key file");
  }
  const cert = readPem(options.certFile, "certificate file");
  const key = readPem(options.keyFile, "key file");
  const ca = options.clientCaFile === undefined ? undefined : readPem(options.clientCaFile, "client CA file");
  secureContext({ cert, key, ...(ca === undefined ? {} : { ca }) }, "the certificate, key or client CA is not usable");
  if (ca === undefined) {
    return { cert, key };
  }
  return { cert, key, ca, requestCert: true, rejectUnauthorized: true };
}

/** Reads and checks the PEM material of a TLS client. */
export function clientTlsMaterial(options: ClientTlsOptions): ClientTlsMaterial {
  const ca = options.ca ?? (options.caFile === undefined ? undefined : readPem(options.caFile, "CA file"));
  const cert = options.cert ?? (options.certFile === undefined ? undefined : readPem(options.certFile, "certificate file"));
  const key = options.key ?? (options.keyFile === undefined ? undefined : readPem(options.keyFile, "key file"));
  if ((cert === undefined) !== (key === undefined)) {
    throw invalid("a client certificate needs its key, and a key its certificate");
  }
  if (options.serverName === "") {
    throw invalid("the expected server name is empty");
  }
  secureContext(
    { ...(ca === undefined ? {} : { ca }), ...(cert === undefined ? {} : { cert }), ...(key === undefined ? {} : { key }) },
    "the CA, certificate or key is not usable",
  );
  return { ca, cert, key, serverName: options.serverName };
}

/**
 * Opens a TLS connection offering HTTP/2 only (ALPN "h2"), with Nagle's
 * algorithm off. The server certificate must name `serverName` when given,
 * else the dialled host.
 */
export function connectTls(material: ClientTlsMaterial, host: string, port: number): tls.TLSSocket {
  const expected = material.serverName ?? host;
  const options: tls.ConnectionOptions = {
    host,
    port,
    ALPNProtocols: ["h2"],
    ...(material.ca === undefined ? {} : { ca: material.ca }),
    ...(material.cert === undefined ? {} : { cert: material.cert }),
    ...(material.key === undefined ? {} : { key: material.key }),
  };
  if (net.isIP(expected) === 0) {
    // SNI carries DNS names only; the certificate is checked against it.
    options.servername = expected;
  } else {
    options.checkServerIdentity = (_host, cert) => tls.checkServerIdentity(expected, cert);
  }
  const socket = tls.connect(options);
  socket.setNoDelay(true);
  // Remembered so that a call failing on it is UNAVAILABLE (see tlsFailures).
  socket.on("error", (error: Error) => socketErrors.add(error));
  return socket;
}

/** The errors TLS client sockets emitted: a refused or failed handshake, a closed connection. */
const socketErrors = new WeakSet<Error>();

function fromTlsSocket(error: unknown): Error | undefined {
  for (let cause = error, depth = 0; cause instanceof Error && depth < 8; cause = cause.cause, depth += 1) {
    if (socketErrors.has(cause)) {
      return cause;
    }
  }
  return undefined;
}

/**
 * A client interceptor making a call that failed on its TLS connection (the
 * server's certificate not trusted or not naming the host, the client's
 * certificate refused) UNAVAILABLE, as gRPC clients in other languages
 * report it, instead of connect-node's INTERNAL.
 */
export function tlsFailures(): Interceptor {
  return (next) => async (request) => {
    try {
      return await next(request);
    } catch (error) {
      const cause = fromTlsSocket(error);
      if (error instanceof ConnectError && cause !== undefined && error.code !== Code.Unavailable) {
        throw new ConnectError(`TLS: ${cause.message}`, Code.Unavailable, undefined, undefined, error);
      }
      throw error;
    }
  };
}
