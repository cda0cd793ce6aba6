-- An approved offer's pricing (the Price-table schedule, IOF, CET) is about 4 kB of JSONB, past
-- the 2 kB at which Postgres compresses a row's values, so every assessment compressed it with
-- pglz: 3.3 % of the database's CPU under `bench api` (perf, docs/BENCHMARKS.md). lz4 compresses
-- it several times faster for about the same size. Only rows written from now on use it; old
-- ones read as before. A server built without lz4 keeps pglz rather than refusing to migrate.

DO $$
BEGIN
    ALTER TABLE credit_offers ALTER COLUMN pricing SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 is not available on this server; credit_offers.pricing stays pglz';
END
$$;
