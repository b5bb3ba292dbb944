#!/usr/bin/env bash
# Installs Debian's PostgreSQL server binaries (initdb, pg_ctl, postgres) for the distributed sweep
# test, only where they are missing. It starts no server: tests/postgres_fixture.py starts a
# throwaway cluster on 127.0.0.1 for the test session. Where it cannot install (not root, no
# apt-get, the install fails) it prints one line and exits 0: that test is then skipped with a message.
set -euo pipefail

have_initdb() {
    command -v initdb >/dev/null 2>&1 && return 0
    local f
    for f in /usr/lib/postgresql/*/bin/initdb; do
        [ -x "$f" ] && return 0
    done
    return 1
}

if have_initdb; then
    exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "PostgreSQL could not be installed (needs root and apt-get): the distributed sweep test will be skipped"
    exit 0
fi

# Debian's package would create and start a "main" cluster on port 5432: ask it not to (the
# fixture makes its own cluster). createcluster.conf includes this directory.
mkdir -p /etc/postgresql-common/createcluster.d
conf=/etc/postgresql-common/createcluster.d/stitch-no-main-cluster.conf
[ -e "$conf" ] || echo "create_main_cluster = false" >"$conf"

if apt-get update -qq >/dev/null \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null \
    && have_initdb; then
    exit 0
fi
echo "PostgreSQL could not be installed with apt-get: the distributed sweep test will be skipped"
exit 0
