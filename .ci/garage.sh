#!/usr/bin/env bash
# Starts a single-node garage (a production S3 store) on loopback for artgc's tests.
# Usage: eval "$(.ci/garage.sh start DIR)"   -> exports ARTGC_TEST_S3_* and GARAGE_PID
#        .ci/garage.sh stop DIR
# Installs garage 2.5.0 from crates.io into $GARAGE_ROOT (default /opt/garage) when missing.
set -euo pipefail

cmd=${1:?start|stop}
dir=${2:?state directory}
root=${GARAGE_ROOT:-/opt/garage}
garage=$(command -v garage || true)
[ -n "$garage" ] || garage=$root/bin/garage
s3_port=${GARAGE_S3_PORT:-39900}
rpc_port=${GARAGE_RPC_PORT:-39901}

case "$cmd" in
stop)
    [ -f "$dir/pid" ] && kill "$(cat "$dir/pid")" 2>/dev/null || true
    exit 0
    ;;
start) ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac

if [ ! -x "$garage" ]; then
    echo "installing garage 2.5.0 into $root (takes several minutes)" >&2
    cargo install garage --version 2.5.0 --locked --root "$root" -j "$(nproc)" >&2
fi

mkdir -p "$dir/meta" "$dir/data"
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat > "$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
TOML

"$garage" -c "$dir/garage.toml" server > "$dir/server.log" 2>&1 &
echo $! > "$dir/pid"
g() { "$garage" -c "$dir/garage.toml" "$@"; }
for _ in $(seq 1 100); do
    g status > /dev/null 2>&1 && break
    sleep 0.2
done
node=$(g node id -q 2>/dev/null | cut -d@ -f1)
g layout assign -z dc1 -c 1G "$node" >&2
g layout apply --version 1 >&2
key_id="GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
key_secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
g key import --yes -n artgc-tests "$key_id" "$key_secret" >&2
g key allow --create-bucket artgc-tests >&2
# Wait until the S3 API answers.
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$s3_port") 2>/dev/null && break
    sleep 0.1
done
cat <<ENV | tee "$dir/env"
export GARAGE_PID=$(cat "$dir/pid")
export ARTGC_TEST_S3_ENDPOINT=127.0.0.1:$s3_port
export ARTGC_TEST_S3_ACCESS_KEY=$key_id
export ARTGC_TEST_S3_SECRET_KEY=$key_secret
export ARTGC_TEST_S3_REGION=garage
ENV
