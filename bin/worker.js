#!/usr/bin/env node
// `audit-batcher worker ...`: runs one AuditWorker (a member of a pool writing a Redis stream's audit
// entries to PostgreSQL) until SIGTERM or SIGINT, for process managers (pm2, systemd, Kubernetes).
//
//   node bin/worker.js --redis <url> --stream audit --group audit-writers --database <url>
//                      [--table <t>] [--shards N] [--consumer <name>] [--max-batch-rows N]
//                      [--claim-idle-ms N] [--claim-interval-ms N] [--block-ms N]
//                      [--dead-letter-table <t>] [--ssl-root-cert <file>]
//
// - prints one line on stdout once it is reading;
// - on SIGTERM/SIGINT it stops the worker (the batch in hand is committed and acknowledged) and exits 0,
//   or 1 when entries were left unacknowledged (they stay pending in Redis, claimed by another worker);
// - a configuration error (a bad or missing flag, an option the worker refuses) exits 2 with one line on
//   stderr; Redis unreachable at start exits 1. No message holds a password.
'use strict'

const USAGE =
  'usage: audit-batcher worker --redis <url> --database <url> [--stream audit] [--group audit-writers] ' +
  '[--table <t>] [--shards N] [--consumer <name>] [--max-batch-rows N] [--claim-idle-ms N] ' +
  '[--claim-interval-ms N] [--block-ms N] [--dead-letter-table <t>] [--ssl-root-cert <file>]'

// flag -> [where in the options, kind]
const FLAGS = {
  '--redis': ['redis.url', 'string'],
  '--stream': ['redis.stream', 'string'],
  '--group': ['redis.group', 'string'],
  '--shards': ['redis.shards', 'number'],
  '--consumer': ['redis.consumer', 'string'],
  '--claim-idle-ms': ['redis.claimIdleMs', 'number'],
  '--claim-interval-ms': ['redis.claimIntervalMs', 'number'],
  '--block-ms': ['redis.blockMs', 'number'],
  '--database': ['connectionString', 'string'],
  '--table': ['table', 'string'],
  '--dead-letter-table': ['deadLetterTable', 'string'],
  '--max-batch-rows': ['maxBatchRows', 'number'],
  '--ssl-root-cert': ['sslRootCert', 'string'],
}

class UsageError extends Error {}

/** The worker's options from `argv` (the arguments after `worker`); throws a UsageError. */
function parse(argv) {
  const options = { redis: {} }
  for (let i = 0; i < argv.length; i++) {
    let flag = argv[i]
    let value
    const eq = flag.indexOf('=')
    if (flag.startsWith('--') && eq > 0) {
      value = flag.slice(eq + 1)
      flag = flag.slice(0, eq)
    }
    if (flag === '--help' || flag === '-h') throw new UsageError('')
    const known = FLAGS[flag]
    if (!known) throw new UsageError(`unknown argument ${JSON.stringify(flag)}`)
    if (value === undefined) {
      value = argv[++i]
      if (value === undefined) throw new UsageError(`${flag} needs a value`)
    }
    const [where, kind] = known
    let parsed = value
    if (kind === 'number') {
      parsed = Number(value)
      if (value.trim() === '' || !Number.isFinite(parsed)) throw new UsageError(`${flag} must be a number, got ${JSON.stringify(value)}`)
    }
    const [a, b] = where.split('.')
    if (b) options[a][b] = parsed
    else options[a] = parsed
  }
  if (options.redis.url === undefined) throw new UsageError('--redis <url> is required')
  if (options.connectionString === undefined) throw new UsageError('--database <url> is required')
  return options
}

/**
 * Runs the worker until SIGTERM or SIGINT. Resolves with the exit code (and sets process.exitCode); never
 * calls process.exit, so that output is flushed first.
 */
async function run(argv) {
  let options
  try {
    options = parse(argv)
  } catch (e) {
    if (!(e instanceof UsageError)) throw e
    if (e.message) process.stderr.write(`audit-batcher worker: ${e.message}\n${USAGE}\n`)
    else process.stdout.write(`${USAGE}\n`)
    return (process.exitCode = e.message ? 2 : 0)
  }
  const { AuditWorker } = require('..')
  let worker
  try {
    worker = new AuditWorker(options)
  } catch (e) {
    process.stderr.write(`audit-batcher worker: ${e.message}\n`)
    return (process.exitCode = e.code === 'ERR_AUDIT_INVALID_OPTIONS' ? 2 : 1)
  }
  // The worker holds no handle of the event loop (it reads on the addon's threads): this timer keeps
  // the process alive until a signal stops it.
  const keepAlive = setInterval(() => {}, 1 << 30)
  let stopping = null
  const stop = () => {
    if (!stopping) {
      stopping = worker.stop().then(
        () => 0,
        (e) => {
          process.stderr.write(`audit-batcher worker: ${e.message}\n`)
          return 1
        },
      )
    }
    return stopping
  }
  let signalled
  const signal = new Promise((resolve) => {
    signalled = resolve
  })
  const onSignal = (name) => signalled(name)
  process.on('SIGTERM', onSignal)
  process.on('SIGINT', onSignal)
  try {
    try {
      await worker.start()
    } catch (e) {
      process.stderr.write(`audit-batcher worker: ${e.message}\n`)
      return (process.exitCode = e.code === 'ERR_AUDIT_INVALID_OPTIONS' ? 2 : 1)
    }
    const { stream = 'audit', group = 'audit-writers' } = options.redis
    process.stdout.write(
      `audit-batcher worker: reading stream ${JSON.stringify(stream)} as ${JSON.stringify(worker.consumer)} in group ${JSON.stringify(group)}\n`,
    )
    const name = await signal
    process.stdout.write(`audit-batcher worker: ${name}, stopping\n`)
    const code = await stop()
    const s = worker.stats()
    process.stdout.write(
      `audit-batcher worker: stopped (written ${s.entriesWritten}, acknowledged ${s.entriesAcked}, claimed ${s.entriesClaimed}, dead-lettered ${s.entriesDeadLettered})\n`,
    )
    return (process.exitCode = code)
  } finally {
    clearInterval(keepAlive)
    process.off('SIGTERM', onSignal)
    process.off('SIGINT', onSignal)
  }
}

module.exports = { run, parse }

if (require.main === module) {
  run(process.argv.slice(2)).catch((e) => {
    process.stderr.write(`audit-batcher worker: ${e && e.message}\n`)
    process.exitCode = 1
  })
}
