-- An approved offer's pricing (the Price-table schedule, IOF, CET) is about 4 kB of JSONB, past
-- the 2 kB at which Postgres compresses a row's values, so every assessment compressed it with
-- pglz: 3.3 % of the database's CPU under `bench api` (perf, docs/BENCHMARKS.md). lz4 compresses
-- it several times faster for about the same size. Only rows written from now on use it; old
-- ones read as before. A server that cannot (Postgres 13 has no per-column compression; a
-- build without lz4 refuses it) keeps pglz rather than refusing to migrate: the statement is
-- a string so that Postgres 13 does not reject the block's syntax before it runs.

DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000 THEN
        EXECUTE 'ALTER TABLE credit_offers ALTER COLUMN pricing SET COMPRESSION lz4';
    ELSE
        RAISE NOTICE 'Postgres 13 compresses with pglz only; credit_offers.pricing stays pglz';
    END IF;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 is not available on this server; credit_offers.pricing stays pglz';
END
$$;
