/**
 * Throw-away X.509 certificates for the TLS tests, made with node:crypto alone (no openssl CLI, no
 * package): ECDSA P-256 keys, certificates DER-encoded by hand and signed with ecdsa-with-SHA256.
 *
 *   const ca = makeCa('test CA');
 *   const server = ca.issue({ commonName: 'localhost', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
 *   // ca.cert, server.cert, server.key: PEM strings
 *
 * Each certificate is checked with Node's own X509Certificate before it is returned.
 */
import { X509Certificate, createHash, generateKeyPairSync, randomBytes, sign, type KeyObject } from 'node:crypto';
import { isIPv4 } from 'node:net';

export interface Issued {
  /** The certificate, PEM. */
  readonly cert: string;
  /** Its private key, PEM (PKCS#8). */
  readonly key: string;
}

export interface Ca extends Issued {
  /** A server certificate signed by this CA. */
  issue(subject: ServerSubject): Issued;
}

export interface ServerSubject {
  commonName: string;
  /** subjectAltName DNS names: what verify-full checks the host name against. */
  dnsNames?: string[];
  /** subjectAltName IPv4 addresses. */
  ipAddresses?: string[];
  /** Days the certificate is valid from now (it is also valid from an hour ago). Default 30. */
  days?: number;
}

/** A self-signed CA certificate and its key. */
export function makeCa(commonName: string): Ca {
  const keys = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const name = distinguishedName(commonName);
  const spki = keys.publicKey.export({ type: 'spki', format: 'der' });
  const der = certificate({
    issuer: name,
    subject: name,
    spki,
    days: 365,
    signer: keys.privateKey,
    extensions: [
      extension(OID.basicConstraints, true, seq(bool(true))),
      extension(OID.keyUsage, true, keyUsage([KEY_CERT_SIGN, CRL_SIGN])),
      extension(OID.subjectKeyIdentifier, false, octets(keyId(spki))),
    ],
  });
  const cert = pem('CERTIFICATE', der);
  const x509 = new X509Certificate(cert);
  if (!x509.ca || !x509.verify(keys.publicKey)) throw new Error('certs: the CA certificate does not verify');
  return {
    cert,
    key: privateKeyPem(keys.privateKey),
    issue(subject) {
      const leaf = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
      const leafSpki = leaf.publicKey.export({ type: 'spki', format: 'der' });
      const altNames = [
        ...(subject.dnsNames ?? []).map((dns) => tagged(0x82, Buffer.from(dns, 'ascii'))),
        ...(subject.ipAddresses ?? []).map((ip) => {
          if (!isIPv4(ip)) throw new Error(`certs: only IPv4 addresses are supported, got ${ip}`);
          return tagged(0x87, Buffer.from(ip.split('.').map(Number)));
        }),
      ];
      const leafDer = certificate({
        issuer: name,
        subject: distinguishedName(subject.commonName),
        spki: leafSpki,
        days: subject.days ?? 30,
        signer: keys.privateKey,
        extensions: [
          extension(OID.basicConstraints, true, seq()),
          extension(OID.keyUsage, true, keyUsage([DIGITAL_SIGNATURE])),
          extension(OID.extKeyUsage, false, seq(oid(OID.serverAuth))),
          extension(OID.subjectKeyIdentifier, false, octets(keyId(leafSpki))),
          extension(OID.authorityKeyIdentifier, false, seq(tagged(0x80, keyId(spki)))),
          ...(altNames.length > 0 ? [extension(OID.subjectAltName, false, seq(...altNames))] : []),
        ],
      });
      const leafCert = pem('CERTIFICATE', leafDer);
      const check = new X509Certificate(leafCert);
      if (!check.verify(keys.publicKey) || !check.checkIssued(x509)) {
        throw new Error('certs: the server certificate does not verify against its CA');
      }
      return { cert: leafCert, key: privateKeyPem(leaf.privateKey) };
    },
  };
}

// ---------------------------------------------------------------------------
// X.509 (RFC 5280) in DER
// ---------------------------------------------------------------------------

const OID = {
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  commonName: '2.5.4.3',
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  authorityKeyIdentifier: '2.5.29.35',
  extKeyUsage: '2.5.29.37',
  serverAuth: '1.3.6.1.5.5.7.3.1',
} as const;

// KeyUsage bits (RFC 5280 4.2.1.3).
const DIGITAL_SIGNATURE = 0;
const KEY_CERT_SIGN = 5;
const CRL_SIGN = 6;

interface CertificateParts {
  issuer: Buffer;
  subject: Buffer;
  spki: Buffer;
  days: number;
  signer: KeyObject;
  extensions: Buffer[];
}

function certificate(p: CertificateParts): Buffer {
  const now = Date.now();
  const algorithm = seq(oid(OID.ecdsaWithSha256));
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x40; // positive, and no leading zero byte needed
  const tbs = seq(
    tagged(0xa0, integer(Buffer.from([2]))), // v3
    integer(serial),
    algorithm,
    p.issuer,
    seq(time(new Date(now - 3_600_000)), time(new Date(now + p.days * 86_400_000))),
    p.subject,
    p.spki,
    tagged(0xa3, seq(...p.extensions)),
  );
  const signature = sign('sha256', tbs, p.signer); // DER ECDSA-Sig-Value, as X.509 wants
  return seq(tbs, algorithm, bitString(signature));
}

function distinguishedName(commonName: string): Buffer {
  return seq(set(seq(oid(OID.commonName), tlv(0x0c, Buffer.from(commonName, 'utf8')))));
}

function extension(id: string, critical: boolean, value: Buffer): Buffer {
  return seq(oid(id), ...(critical ? [bool(true)] : []), octets(value));
}

function keyUsage(bits: number[]): Buffer {
  let byte = 0;
  for (const bit of bits) byte |= 0x80 >> bit;
  // Unused trailing bits: up to the lowest bit set.
  const unused = Math.max(0, 7 - Math.max(...bits));
  return tlv(0x03, Buffer.from([unused, byte]));
}

/** RFC 5280's method 1: SHA-1 of the subjectPublicKey bits. */
function keyId(spki: Buffer): Buffer {
  // For P-256 the SPKI is SEQUENCE { AlgorithmIdentifier, BIT STRING (0x00 || 65-byte point) }: the
  // point is the last 65 bytes.
  return createHash('sha1').update(spki.subarray(spki.length - 65)).digest();
}

function time(d: Date): Buffer {
  const pad = (n: number) => String(n).padStart(2, '0');
  const body =
    pad(d.getUTCFullYear() % 100) +
    pad(d.getUTCMonth() + 1) +
    pad(d.getUTCDate()) +
    pad(d.getUTCHours()) +
    pad(d.getUTCMinutes()) +
    pad(d.getUTCSeconds()) +
    'Z';
  if (d.getUTCFullYear() >= 2050) return tlv(0x18, Buffer.from(`${d.getUTCFullYear()}${body.slice(2)}`, 'ascii'));
  return tlv(0x17, Buffer.from(body, 'ascii')); // UTCTime
}

function pem(label: string, der: Buffer): string {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}

function privateKeyPem(key: KeyObject): string {
  return key.export({ type: 'pkcs8', format: 'pem' }).toString();
}

// ---------------------------------------------------------------------------
// DER primitives
// ---------------------------------------------------------------------------

function tlv(tag: number, content: Buffer): Buffer {
  const n = content.length;
  let length: Buffer;
  if (n < 0x80) length = Buffer.from([n]);
  else if (n < 0x100) length = Buffer.from([0x81, n]);
  else if (n < 0x10000) length = Buffer.from([0x82, n >> 8, n & 0xff]);
  else throw new Error('certs: DER element too long');
  return Buffer.concat([Buffer.from([tag]), length, content]);
}

const seq = (...items: Buffer[]) => tlv(0x30, Buffer.concat(items));
const set = (...items: Buffer[]) => tlv(0x31, Buffer.concat(items));
const tagged = (tag: number, content: Buffer) => tlv(tag, content);
const octets = (content: Buffer) => tlv(0x04, content);
const bool = (value: boolean) => tlv(0x01, Buffer.from([value ? 0xff : 0x00]));
const bitString = (content: Buffer) => tlv(0x03, Buffer.concat([Buffer.from([0]), content]));

/** A non-negative INTEGER from its big-endian magnitude. */
function integer(magnitude: Buffer): Buffer {
  const needsPad = magnitude.length > 0 && (magnitude[0]! & 0x80) !== 0;
  return tlv(0x02, needsPad ? Buffer.concat([Buffer.from([0]), magnitude]) : magnitude);
}

function oid(dotted: string): Buffer {
  const arcs = dotted.split('.').map(Number);
  const bytes: number[] = [40 * arcs[0]! + arcs[1]!];
  for (const arc of arcs.slice(2)) {
    const chunk = [arc & 0x7f];
    for (let rest = Math.floor(arc / 128); rest > 0; rest = Math.floor(rest / 128)) chunk.unshift((rest & 0x7f) | 0x80);
    bytes.push(...chunk);
  }
  return tlv(0x06, Buffer.from(bytes));
}
