-- Purpose: flux.apply_column_policies() turns flux.column_policies into column GRANTs, so raw SQL obeys them too.

-- For every table with a policy, and each Flux role and privilege (SELECT, INSERT, UPDATE): a role that holds
-- the privilege on the whole table gets it instead on every column its policies allow (a masked column is not
-- readable); the conversion is remembered in flux.column_policy_grants, which from then on says "the role held
-- it on the whole table", so a column whose policy is deleted (or a column added later) is granted again on the
-- next run, and a privilege with no rule left gets its table-level grant back. Nothing is ever granted that the
-- role did not hold before: a role with no table-level grant only loses column grants on denied columns (those
-- a DBA made by hand are not given back when the policy goes), a REVOKE on the whole table after a conversion
-- is respected (the conversion is forgotten), and a privilege whose every column is denied is not remembered
-- either (no column grant would be left to show such a REVOKE). Running it twice changes nothing the second time.
-- Returns the GRANT and REVOKE statements it ran, for a DBA to read. Run it after every migration or GRANT on
-- a table with policies: a table-level GRANT made later re-opens every column until the next run.
-- Not SECURITY DEFINER: it runs as the caller, who must own the tables (or be a superuser).
CREATE OR REPLACE FUNCTION flux.apply_column_policies() RETURNS SETOF text
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    policy record;
    target record;
    relation oid;
    relation_kind "char";
    qualified_name text;
    table_columns text[];
    flux_role text;
    database_role text;
    role_oid oid;
    privilege_name text;
    denied text[];
    allowed text[];
    held_on_table boolean;
    held_columns text[];
    converted boolean;
    changed_columns text[];
    statement text;
BEGIN
    -- Two runs at once would both convert the same grants.
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('flux.apply_column_policies'));

    -- Every policy must name an existing table and column before any privilege changes.
    FOR policy IN
        SELECT p.id, p.table_schema, p.table_name, p.column_name FROM flux.column_policies p ORDER BY p.id
    LOOP
        SELECT c.oid, c.relkind INTO relation, relation_kind
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = policy.table_schema AND c.relname = policy.table_name;
        qualified_name := pg_catalog.format('%I.%I', policy.table_schema, policy.table_name);
        IF relation IS NULL OR relation_kind NOT IN ('r', 'p', 'v', 'm', 'f') THEN
            RAISE EXCEPTION 'column policy % names table %, which does not exist', policy.id, qualified_name
                USING ERRCODE = 'FX101',
                      HINT = pg_catalog.format(
                          'create the table, or delete the policy: DELETE FROM flux.column_policies WHERE id = %s',
                          policy.id);
        END IF;
        IF NOT EXISTS (
            SELECT FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = relation AND a.attname = policy.column_name AND a.attnum > 0 AND NOT a.attisdropped
        ) THEN
            RAISE EXCEPTION 'column policy % names column %.%, which does not exist',
                    policy.id, qualified_name, pg_catalog.quote_ident(policy.column_name)
                USING ERRCODE = 'FX102',
                      HINT = pg_catalog.format(
                          '%s has columns %s; fix column_name, or delete the policy: '
                          'DELETE FROM flux.column_policies WHERE id = %s',
                          qualified_name,
                          (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
                             FROM pg_catalog.pg_attribute a
                            WHERE a.attrelid = relation AND a.attnum > 0 AND NOT a.attisdropped),
                          policy.id);
        END IF;
    END LOOP;

    -- A dropped table took its grants with it.
    DELETE FROM flux.column_policy_grants g
     WHERE NOT EXISTS (
         SELECT FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = g.table_schema AND c.relname = g.table_name
     );

    -- Tables with policies, and tables whose last policy went (their table-level grants are given back).
    FOR target IN
        SELECT p.table_schema, p.table_name FROM flux.column_policies p
         UNION
        SELECT g.table_schema, g.table_name FROM flux.column_policy_grants g
         ORDER BY 1, 2
    LOOP
        relation := (
            SELECT c.oid
              FROM pg_catalog.pg_class c
              JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = target.table_schema AND c.relname = target.table_name
        );
        qualified_name := pg_catalog.format('%I.%I', target.table_schema, target.table_name);
        table_columns := ARRAY(
            SELECT a.attname::text
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = relation AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum
        );

        FOREACH flux_role IN ARRAY ARRAY['anon', 'user', 'service'] LOOP
            database_role := 'flux_' || flux_role;
            role_oid := (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = database_role);

            FOREACH privilege_name IN ARRAY ARRAY['SELECT', 'INSERT', 'UPDATE'] LOOP
                denied := ARRAY(
                    SELECT p.column_name
                      FROM flux.column_policies p
                     WHERE p.table_schema = target.table_schema
                       AND p.table_name = target.table_name
                       AND p.role = flux_role
                       AND CASE WHEN privilege_name = 'SELECT' THEN NOT p.readable OR p.mask IS NOT NULL
                                ELSE NOT p.writable END
                );
                allowed := ARRAY(
                    SELECT u.column_name
                      FROM pg_catalog.unnest(table_columns) WITH ORDINALITY AS u(column_name, position)
                     WHERE u.column_name <> ALL (denied)
                     ORDER BY u.position
                );
                -- Only grants made to the role itself count (not PUBLIC's, not those of roles it belongs to).
                held_on_table := EXISTS (
                    SELECT FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) AS x
                     WHERE c.oid = relation AND x.grantee = role_oid AND x.privilege_type = privilege_name
                );
                held_columns := ARRAY(
                    SELECT a.attname::text
                      FROM pg_catalog.pg_attribute a
                     WHERE a.attrelid = relation AND a.attnum > 0 AND NOT a.attisdropped
                       AND EXISTS (
                           SELECT FROM pg_catalog.aclexplode(a.attacl) AS x
                            WHERE x.grantee = role_oid AND x.privilege_type = privilege_name
                       )
                     ORDER BY a.attnum
                );
                converted := EXISTS (
                    SELECT FROM flux.column_policy_grants g
                     WHERE g.table_schema = target.table_schema AND g.table_name = target.table_name
                       AND g.role = flux_role AND g.privilege = privilege_name
                );

                -- Apply always leaves a converted privilege on at least one column, so none at all means a
                -- REVOKE on the whole table since the last run: the role no longer holds it, so forget it
                -- instead of granting it again.
                IF converted AND NOT held_on_table AND pg_catalog.cardinality(held_columns) = 0 THEN
                    DELETE FROM flux.column_policy_grants g
                     WHERE g.table_schema = target.table_schema AND g.table_name = target.table_name
                       AND g.role = flux_role AND g.privilege = privilege_name;
                    converted := false;
                END IF;

                IF pg_catalog.cardinality(denied) = 0 THEN
                    -- No rule restricts this privilege any more: give the table-level grant back.
                    IF converted THEN
                        IF pg_catalog.cardinality(held_columns) > 0 THEN
                            -- On a table, REVOKE also drops every column grant.
                            statement := pg_catalog.format(
                                'REVOKE %s ON %s FROM %I', privilege_name, qualified_name, database_role);
                            EXECUTE statement;
                            RETURN NEXT statement;
                            held_on_table := false;
                        END IF;
                        IF NOT held_on_table THEN
                            statement := pg_catalog.format(
                                'GRANT %s ON %s TO %I', privilege_name, qualified_name, database_role);
                            EXECUTE statement;
                            RETURN NEXT statement;
                        END IF;
                        DELETE FROM flux.column_policy_grants g
                         WHERE g.table_schema = target.table_schema AND g.table_name = target.table_name
                           AND g.role = flux_role AND g.privilege = privilege_name;
                    END IF;
                    CONTINUE;
                END IF;

                IF held_on_table THEN
                    statement := pg_catalog.format(
                        'REVOKE %s ON %s FROM %I', privilege_name, qualified_name, database_role);
                    EXECUTE statement;
                    RETURN NEXT statement;
                    -- A superuser revokes as the owner, so a grant made by another grantor survives.
                    IF EXISTS (
                        SELECT FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) AS x
                         WHERE c.oid = relation AND x.grantee = role_oid AND x.privilege_type = privilege_name
                    ) THEN
                        RAISE EXCEPTION 'cannot take % on % away from %: another role granted it',
                                privilege_name, qualified_name, database_role
                            USING ERRCODE = 'insufficient_privilege',
                                  HINT = 'revoke it as the role that granted it (see \dp), grant it again as '
                                         'the table owner, and run flux.apply_column_policies() again';
                    END IF;
                    held_columns := '{}';
                    converted := true;
                END IF;

                IF converted AND pg_catalog.cardinality(allowed) = 0 THEN
                    -- Every column is denied: nothing stays granted, so a later REVOKE would leave no trace to
                    -- tell it apart. Forget the conversion rather than risk giving back what a DBA revoked.
                    DELETE FROM flux.column_policy_grants g
                     WHERE g.table_schema = target.table_schema AND g.table_name = target.table_name
                       AND g.role = flux_role AND g.privilege = privilege_name;
                    converted := false;
                    RAISE NOTICE '% keeps no column of % for %; deleting the policies will not give it back',
                            database_role, privilege_name, qualified_name
                        USING HINT = pg_catalog.format('GRANT %s ON %s TO %I again after deleting them',
                                                       privilege_name, qualified_name, database_role);
                END IF;

                IF converted THEN
                    changed_columns := ARRAY(
                        SELECT c FROM pg_catalog.unnest(allowed) AS c WHERE c <> ALL (held_columns)
                    );
                    IF pg_catalog.cardinality(changed_columns) > 0 THEN
                        statement := pg_catalog.format(
                            'GRANT %s (%s) ON %s TO %I',
                            privilege_name,
                            (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c), ', ')
                               FROM pg_catalog.unnest(changed_columns) AS c),
                            qualified_name,
                            database_role);
                        EXECUTE statement;
                        RETURN NEXT statement;
                    END IF;
                    INSERT INTO flux.column_policy_grants AS g
                           (table_schema, table_name, role, privilege, granted_columns)
                    VALUES (target.table_schema, target.table_name, flux_role, privilege_name, allowed)
                        ON CONFLICT ON CONSTRAINT column_policy_grants_pkey DO UPDATE
                       SET granted_columns = excluded.granted_columns
                     WHERE g.granted_columns IS DISTINCT FROM excluded.granted_columns;
                END IF;

                -- Denied columns lose their column grants, whoever made them.
                changed_columns := ARRAY(SELECT c FROM pg_catalog.unnest(held_columns) AS c WHERE c = ANY (denied));
                IF pg_catalog.cardinality(changed_columns) > 0 THEN
                    statement := pg_catalog.format(
                        'REVOKE %s (%s) ON %s FROM %I',
                        privilege_name,
                        (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c), ', ')
                           FROM pg_catalog.unnest(changed_columns) AS c),
                        qualified_name,
                        database_role);
                    EXECUTE statement;
                    RETURN NEXT statement;
                END IF;
            END LOOP;
        END LOOP;
    END LOOP;

    -- Grants to PUBLIC, to a role the Flux role belongs to, or owning the table still let it through.
    FOR policy IN
        SELECT p.table_schema, p.table_name, p.column_name, 'flux_' || p.role AS database_role, v.privilege_name
          FROM flux.column_policies p
         CROSS JOIN LATERAL (
             SELECT 'SELECT' WHERE NOT p.readable OR p.mask IS NOT NULL
             UNION ALL SELECT 'INSERT' WHERE NOT p.writable
             UNION ALL SELECT 'UPDATE' WHERE NOT p.writable
         ) AS v(privilege_name)
         ORDER BY p.id
    LOOP
        qualified_name := pg_catalog.format('%I.%I', policy.table_schema, policy.table_name);
        IF pg_catalog.has_column_privilege(
               policy.database_role::name, qualified_name::regclass, policy.column_name, policy.privilege_name) THEN
            RAISE WARNING '% still has % on %.% despite its column policy',
                    policy.database_role, policy.privilege_name, qualified_name,
                    pg_catalog.quote_ident(policy.column_name)
                USING HINT = 'it holds the privilege through PUBLIC, through a role it is a member of, or by '
                             'owning the table; revoke that grant';
        END IF;
    END LOOP;
END
$$;

COMMENT ON FUNCTION flux.apply_column_policies() IS
    'Turns flux.column_policies into column GRANTs for flux_anon, flux_user and flux_service; returns the '
    'statements it ran. Idempotent; run it after every migration or GRANT on a table with policies.';

-- It changes privileges; only the DBA who migrates runs it.
REVOKE EXECUTE ON FUNCTION flux.apply_column_policies() FROM PUBLIC;
