//! Tests against a real redis-server (and PostgreSQL).
