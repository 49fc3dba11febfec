"""Bearer tokens (SPEC 9): missing, wrong and revoked tokens get 401 on every route but
``/healthz``; the database keeps only hashes, and no log holds a token."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import httpx
import sqlalchemy as sa

from grsai_pipeline_tests.helpers import rows
from grsai_pipeline_tests.test_api.api_support import served_api
from grsai_pipeline_tests.test_cli.cli_helpers import assert_error, run_cli


def test_missing_wrong_and_revoked_tokens_get_401_on_every_route_but_healthz(
    database_url: str, tmp_path: Path
) -> None:
    with served_api(database_url, tmp_path) as api:
        spare = api.cli("api", "token", "create", "spare").strip()
        with api.client() as client:
            document = client.get("/openapi.json").json()
        routes = [
            (method.upper(), re.sub(r"\{(batch|user|task)_id\}", "x1", path))
            for path, operations in document["paths"].items()
            for method in operations
        ] + [("GET", "/openapi.json")]
        assert len(routes) == 11  # SPEC 9's nine routes, a video, and the document
        with api.client(spare) as client:
            assert client.get("/v1/batches").status_code == 200
        api.cli("api", "token", "revoke", "spare")

        for authorization in (None, "Bearer gp_wrong", f"Basic {spare}", f"Bearer {spare}"):
            headers = {"Authorization": authorization} if authorization else {}
            for method, path in routes:
                if path == "/healthz":
                    continue
                answer = httpx.request(method, api.base_url + path, headers=headers, json={})
                assert answer.status_code == 401, (authorization, method, path, answer.text)
                assert answer.headers["WWW-Authenticate"] == "Bearer"
                assert answer.json()["field"] == "Authorization"
        assert httpx.get(api.base_url + "/healthz").status_code == 200
        with api.client() as client:  # the other token still works
            assert client.get("/v1/batches").status_code == 200


def test_no_token_key_or_body_in_the_database_or_the_access_log(
    database_url: str, tmp_path: Path, engine: sa.Engine
) -> None:
    prompt, key = "a lighthouse seen by 3f9c-marker", "idem-5d1e-marker"
    with served_api(database_url, tmp_path) as api:
        with api.client() as client:
            assert client.post("/v1/users/ada/grants", json={"amount": 50}).status_code == 201
            body = {"user_id": "ada", "tasks": [{"prompt": prompt, "model": "sora-2"}]}
            made = client.post("/v1/batches", json=body, headers={"Idempotency-Key": key})
            assert made.status_code == 201
        refused = httpx.get(api.base_url + "/v1/batches", headers={"Authorization": "Bearer x"})
        assert refused.status_code == 401
        token = api.token

    stored = rows(engine, "SELECT * FROM api_tokens")
    assert [r["token_sha256"] for r in stored] == [hashlib.sha256(token.encode()).hexdigest()]
    for table in sa.inspect(engine).get_table_names():
        assert token not in repr(rows(engine, f"SELECT * FROM {table}")), table
    if engine.dialect.name == "sqlite":
        path = Path(engine.url.database or "")
        for file in [path, *path.parent.glob(path.name + "-*")]:
            assert token.encode() not in file.read_bytes(), file
    log = api.log.read_text()
    assert '"POST /v1/batches HTTP/1.1" 201' in log  # the access log is on
    assert '"GET /v1/batches HTTP/1.1" 401' in log
    for secret in (token, token.removeprefix("gp_"), key, prompt):
        assert secret not in log


def test_token_commands_make_list_and_revoke_by_name(tmp_path: Path, database_url: str) -> None:
    settings = {"GRSAI_DATABASE_URL": database_url}

    made = run_cli(["api", "token", "create", "shop-web"], cwd=tmp_path, settings=settings)
    twice = run_cli(["api", "token", "create", "shop-web"], cwd=tmp_path, settings=settings)
    badly = run_cli(["api", "token", "create", "x y"], cwd=tmp_path, settings=settings)

    assert made.code == 0 and made.out.strip().startswith("gp_")
    assert "not shown again" in made.err
    assert_error(twice, 2, "NAME", "shop-web")
    assert_error(badly, 2, "NAME")
    listed = run_cli(["api", "token", "list"], cwd=tmp_path, settings=settings)
    assert listed.out.startswith("shop-web\t") and listed.out.rstrip().endswith("live")
    assert made.out.strip() not in listed.out

    revoked = run_cli(["api", "token", "revoke", "shop-web"], cwd=tmp_path, settings=settings)
    unknown = run_cli(["api", "token", "revoke", "nope"], cwd=tmp_path, settings=settings)

    assert revoked.code == 0 and "revoked" in revoked.out
    assert_error(unknown, 2, "NAME", "nope")
    listed = run_cli(["api", "token", "list"], cwd=tmp_path, settings=settings)
    assert "\trevoked " in listed.out
