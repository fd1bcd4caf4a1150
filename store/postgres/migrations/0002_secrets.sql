-- Secrets every node must agree on (the token signing key, the link
-- signing secret), created by the first node that needs them.
CREATE TABLE secrets (
    name       text PRIMARY KEY,
    value      bytea NOT NULL,
    created_at bigint NOT NULL
);
