-- Every replica remembers the API tokens it has resolved (cloud/src/auth/cache.rs), so that a
-- request costs no query to authenticate. Whatever ends a token's validity tells them, however
-- it was done (the API's rotation, an erasure's cascade, an operator's UPDATE in psql): the digest
-- of every token updated or deleted is notified on `ecs_api_tokens`, and `*` (forget them all)
-- on a TRUNCATE. Notifications leave when the transaction commits, and not at all when it rolls
-- back.

CREATE FUNCTION ecs_notify_token_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('ecs_api_tokens', '*');
    ELSE
        PERFORM pg_notify('ecs_api_tokens', encode(OLD.token_sha256, 'hex'));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER api_tokens_changed
    AFTER UPDATE OR DELETE ON api_tokens
    FOR EACH ROW EXECUTE FUNCTION ecs_notify_token_changed();

CREATE TRIGGER api_tokens_truncated
    AFTER TRUNCATE ON api_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION ecs_notify_token_changed();
