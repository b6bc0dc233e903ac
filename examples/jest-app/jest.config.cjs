// A user's jest project (CommonJS): it finishes without --forceExit.
module.exports = { rootDir: __dirname, testMatch: ['**/*.test.cjs'], testEnvironment: 'node' }
