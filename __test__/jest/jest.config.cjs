// A jest project of a user's app, run by __test__/process.test.ts: jest must finish without --forceExit.
module.exports = {
  rootDir: __dirname,
  testMatch: ['**/*.jest.cjs'],
  testEnvironment: 'node',
}
