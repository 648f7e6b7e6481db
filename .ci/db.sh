#!/usr/bin/env bash
# Starts real PostgreSQL and MariaDB servers (Debian's packages, installed when missing) on
# loopback for the offloaded-node-status tests, each with password authentication over TCP.
# Usage: eval "$(.ci/db.sh start DIR)"  -> exports ARTGC_TEST_POSTGRES and ARTGC_TEST_MYSQL
#        (host:port:user:password of an account that may create databases)
#        .ci/db.sh stop DIR
set -euo pipefail

cmd=${1:?start|stop}
dir=${2:?state directory}
pg_port=${ARTGC_PG_PORT:-39920}
my_port=${ARTGC_MYSQL_PORT:-39921}
password=artgc-test

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

case "$cmd" in
stop)
    if [ -d "$dir/pg" ] && [ -n "$(pg_bin)" ]; then
        runuser -u postgres -- "$(pg_bin)/pg_ctl" -D "$dir/pg" -m fast stop >/dev/null 2>&1 || true
    fi
    [ -f "$dir/mysql.pid" ] && kill "$(cat "$dir/mysql.pid")" 2>/dev/null || true
    for _ in $(seq 1 100); do
        [ -f "$dir/mysql.pid" ] && kill -0 "$(cat "$dir/mysql.pid")" 2>/dev/null || break
        sleep 0.2
    done
    exit 0
    ;;
start) ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac

need=""
[ -n "$(pg_bin)" ] || need="$need postgresql"
command -v mariadbd >/dev/null || need="$need mariadb-server"
if [ -n "$need" ]; then
    echo "installing$need (Debian)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >&2
fi
# Debian's packages start their own servers where they can; the tests use their own.
service postgresql stop >/dev/null 2>&1 || true
service mariadb stop >/dev/null 2>&1 || true

mkdir -p "$dir"
chmod 755 "$dir"

# PostgreSQL: the server refuses to run as root, so it runs as Debian's postgres user.
bin=$(pg_bin)
install -d -o postgres -g postgres -m 700 "$dir/pg"
echo "$password" > "$dir/pg.pw"
chown postgres "$dir/pg.pw"
runuser -u postgres -- "$bin/initdb" -D "$dir/pg" -U postgres --pwfile="$dir/pg.pw" \
    --auth-host=scram-sha-256 --auth-local=trust >"$dir/pg-init.log" 2>&1
runuser -u postgres -- "$bin/pg_ctl" -D "$dir/pg" -l "$dir/pg/server.log" -w \
    -o "-p $pg_port -k $dir/pg -c listen_addresses=127.0.0.1" start >&2

# MariaDB, as root with an explicit --user, its own data directory and socket.
mariadb-install-db --datadir="$dir/my" --user=root --auth-root-authentication-method=normal \
    >"$dir/mysql-init.log" 2>&1
mariadbd --no-defaults --datadir="$dir/my" --user=root --port="$my_port" \
    --bind-address=127.0.0.1 --socket="$dir/mysql.sock" --pid-file="$dir/mysql.pid" \
    --log-error="$dir/mysql.log" --skip-name-resolve >"$dir/mysql.out" 2>&1 &
for _ in $(seq 1 150); do
    mariadb --no-defaults -S "$dir/mysql.sock" -uroot -e 'select 1' >/dev/null 2>&1 && break
    sleep 0.2
done
mariadb --no-defaults -S "$dir/mysql.sock" -uroot -e \
    "CREATE USER IF NOT EXISTS 'artgc'@'%' IDENTIFIED BY '$password';
     GRANT ALL ON *.* TO 'artgc'@'%' WITH GRANT OPTION; FLUSH PRIVILEGES;"

echo "export ARTGC_TEST_POSTGRES=127.0.0.1:$pg_port:postgres:$password"
echo "export ARTGC_TEST_MYSQL=127.0.0.1:$my_port:artgc:$password"
