-- Runs once, when the postgres container starts on an empty data directory
-- (mounted into /docker-entrypoint-initdb.d by docker-compose.yml).
--
-- Each service owns one database and logs in as its own role, so no service can
-- read another's tables. The passwords are for the local compose stack only.

CREATE ROLE consent LOGIN PASSWORD 'consent';
CREATE DATABASE consenttrace_consent OWNER consent;
REVOKE ALL ON DATABASE consenttrace_consent FROM PUBLIC;

CREATE ROLE registry LOGIN PASSWORD 'registry';
CREATE DATABASE consenttrace_registry OWNER registry;
REVOKE ALL ON DATABASE consenttrace_registry FROM PUBLIC;

CREATE ROLE lineage LOGIN PASSWORD 'lineage';
CREATE DATABASE consenttrace_lineage OWNER lineage;
REVOKE ALL ON DATABASE consenttrace_lineage FROM PUBLIC;

CREATE ROLE deletion LOGIN PASSWORD 'deletion';
CREATE DATABASE consenttrace_deletion OWNER deletion;
REVOKE ALL ON DATABASE consenttrace_deletion FROM PUBLIC;
