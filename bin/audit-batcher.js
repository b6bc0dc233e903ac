#!/usr/bin/env node
// audit-batcher's command line: look inside a spool directory, or write what it holds to PostgreSQL without
// the app (a host that will not run the app again).
//
//   audit-batcher spool inspect <dir>
//   audit-batcher spool drain <dir> --database <url> [--table <t>]
//   audit-batcher worker --redis <url> --stream <s> --group <g> --database <url> [--table <t>]  (bin/worker.js)
//
// Exit codes: 0 done; 1 the drain did not write everything; 2 bad usage; 3 the directory is missing or
// a spool in it is held by a live process.
'use strict'

const fs = require('node:fs')

const USAGE = `usage:
  audit-batcher spool inspect <dir>
  audit-batcher spool drain <dir> --database <url> [--table <table>]
  audit-batcher worker --redis <url> --stream <stream> --group <group> --database <url> [--table <table>]`

function fail(code, message) {
  process.stderr.write(`audit-batcher: ${message}\n`)
  process.exit(code)
}

function parse(argv) {
  const [group, command, dir, ...rest] = argv
  if (group !== 'spool' || !['inspect', 'drain'].includes(command) || !dir) fail(2, USAGE)
  const flags = {}
  for (let i = 0; i < rest.length; i++) {
    const name = rest[i]
    if (name !== '--database' && name !== '--table') fail(2, `unknown argument ${name}\n${USAGE}`)
    const value = rest[++i]
    if (value === undefined) fail(2, `${name} needs a value\n${USAGE}`)
    flags[name.slice(2)] = value
  }
  if (command === 'drain' && !flags.database) fail(2, `drain needs --database <url>\n${USAGE}`)
  if (command === 'inspect' && Object.keys(flags).length > 0) fail(2, USAGE)
  return { command, dir, flags }
}

/** The process id in a spool's name (spool-<ms>-<pid>-<rand>). */
function pidOf(spoolPath) {
  const m = /spool-[0-9a-f]+-(\d+)-[0-9a-f]+$/.exec(spoolPath)
  return m ? m[1] : '?'
}

function checkDir(dir) {
  let st
  try {
    st = fs.statSync(dir)
  } catch {
    fail(3, `no spool directory at ${dir}`)
  }
  if (!st.isDirectory()) fail(3, `${dir} is not a directory`)
}

function refuseLive(found, what) {
  const live = found.spools.filter((s) => s.live)
  if (live.length === 0) return
  const names = live.map((s) => `  ${s.path} (pid ${pidOf(s.path)}, ${s.entries} entries)`).join('\n')
  fail(3, `${live.length} spool(s) in this directory are held by a live process; ${what}:\n${names}`)
}

function iso(d) {
  return d ? new Date(d).toISOString() : '-'
}

async function main() {
  const { command, dir, flags } = parse(process.argv.slice(2))
  checkDir(dir)
  const { inspectSpool, AuditBatcher } = require('../index.js')
  const found = inspectSpool(dir)
  if (command === 'inspect') {
    if (found.spools.length === 0) process.stdout.write(`${dir}: no spool\n`)
    for (const s of found.spools) {
      process.stdout.write(
        `${s.path}\n  ${s.live ? `live (pid ${pidOf(s.path)})` : 'not live (its process is gone: the next batcher on this directory replays it)'}\n` +
          `  entries: ${s.entries}  bytes: ${s.bytes}  segments: ${s.segments}\n` +
          `  oldest: ${iso(s.oldest)}  newest: ${iso(s.newest)}\n` +
          `  damaged records: ${s.damaged}  torn tails: ${s.tornTails}\n`,
      )
    }
    for (const q of found.quarantined) process.stdout.write(`quarantined: ${q}\n`)
    refuseLive(found, 'their entries are that process\'s own')
    return
  }
  refuseLive(found, 'stop that process first (its entries are its own), or drain another directory')
  const options = { connectionString: flags.database, spool: { dir }, onError: () => {} }
  if (flags.table) options.table = flags.table
  const audit = new AuditBatcher(options)
  let error
  try {
    await audit.close({ timeoutMs: 60_000 })
  } catch (e) {
    error = e
  }
  const s = audit.stats().spool
  process.stdout.write(
    `drained ${dir}: ${s.replayed} entries written, ${s.replayDeadLettered} dead-lettered, ` +
      `${s.damaged} damaged records skipped, ${s.tornTails} torn tails cut off\n`,
  )
  const left = inspectSpool(dir).spools.filter((x) => !x.live && x.entries > 0)
  if (error || left.length > 0 || s.replayed + s.replayDeadLettered < s.recovered) {
    fail(1, `the drain did not write everything${error ? `: ${error.message}` : ''}; what is left stays in ${dir}`)
  }
}

if (process.argv[2] === 'worker') {
  require('./worker.js')
    .run(process.argv.slice(3))
    .catch((e) => {
      process.stderr.write(`audit-batcher worker: ${e && e.message}\n`)
      process.exitCode = 1
    })
} else {
  main().catch((e) => fail(1, e && e.message ? e.message : String(e)))
}
