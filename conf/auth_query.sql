-- pgrouter's auth_query without a superuser: a SECURITY DEFINER function in a
-- schema of its own, owned by a superuser, callable only by pgrouter's role.
-- Run as a superuser in probe_dbname (default postgres), then set
--   auth_user = pgrouter_auth
--   auth_password = ...            (or a pg_hba.conf line that trusts it from pgrouter)
--   auth_query = SELECT username, password FROM pgrouter.get_auth($1)
-- Patroni replicates it to every member with the rest of the database.
CREATE ROLE pgrouter_auth LOGIN;
CREATE SCHEMA pgrouter;
REVOKE ALL ON SCHEMA pgrouter FROM PUBLIC;
GRANT USAGE ON SCHEMA pgrouter TO pgrouter_auth;
CREATE FUNCTION pgrouter.get_auth(p_user name)
  RETURNS TABLE (username name, password text)
  LANGUAGE sql STABLE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
AS $$
  SELECT rolname, rolpassword FROM pg_authid
  WHERE rolname = p_user AND rolcanlogin
    AND (rolvaliduntil IS NULL OR rolvaliduntil > now())
$$;
REVOKE ALL ON FUNCTION pgrouter.get_auth(name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgrouter.get_auth(name) TO pgrouter_auth;
