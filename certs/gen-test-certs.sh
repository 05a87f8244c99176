#!/usr/bin/env bash
# Makes a throwaway CA and a server certificate signed by it, for testing
# dotgate with clients that verify certificates (kdig +tls-ca, stubby,
# `dotgate query --ca`). Not for production: see certs/README.md.
#
# Usage: certs/gen-test-certs.sh [NAME [OUTDIR [IP...]]]
#   NAME    the server's DNS name, put in a SAN dNSName (default: dns.test)
#   OUTDIR  where to write the files (default: certs/out beside this script,
#           which git ignores)
#   IP...   optional addresses added as SAN iPAddress entries, for clients
#           that verify an IP (systemd-resolved configured with an IP only)
#
# Writes into OUTDIR:
#   ca.pem         the throwaway CA certificate: what clients trust
#   server.pem     the server (leaf) certificate
#   fullchain.pem  the chain dotgate serves (--cert): here the leaf alone
#   server.key     the server's private key (--key), mode 600
# The CA's private key lives only in a temporary directory and is deleted at
# exit, so the CA can sign nothing else.
#
# What clients accept (REQUIREMENTS.md R24; Android and Apple): the name in a
# SAN dNSName, the serverAuth EKU, an ECDSA P-256 key, SHA-256 signatures, and
# at most 825 days of validity (Apple's limit). DAYS=N in the environment
# shortens the validity.
set -euo pipefail

usage() { sed -n '6,11p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in -h | --help) usage; exit 0 ;; esac

name=${1:-dns.test}
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${2:-$script_dir/out}
shift $(($# < 2 ? $# : 2))
ips=("$@")
days=${DAYS:-825}

die() { echo "gen-test-certs: $*" >&2; exit 1; }
command -v openssl >/dev/null || die "openssl is needed (apt-get install openssl)"
if ! [[ $days =~ ^[0-9]+$ ]] || ((days < 1 || days > 825)); then
  die "DAYS must be 1 to 825 (Apple refuses longer validity), not '$days'"
fi
# A DNS name: letters, digits, hyphens and dots; not an IP address.
[[ $name =~ ^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$ ]] ||
  die "'$name' is not a DNS name (give IP addresses after OUTDIR)"
[[ $name =~ ^[0-9.]+$ ]] && die "'$name' is an IP address: give a DNS name first, then the IP after OUTDIR"

san="DNS:$name"
for ip in "${ips[@]}"; do
  [[ $ip =~ ^[0-9A-Fa-f:.]+$ ]] || die "'$ip' is not an IP address"
  san+=",IP:$ip"
done

work=$(mktemp -d -t dotgate-certs.XXXXXX)
trap 'rm -rf "$work"' EXIT
umask 077

cat >"$work/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF

keygen() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# The CA: self-signed, P-256, SHA-256.
keygen "$work/ca.key"
openssl req -x509 -new -config "$work/openssl.cnf" -extensions ca \
  -key "$work/ca.key" -sha256 -days "$days" \
  -subj "/CN=dotgate throwaway test CA $(date -u +%Y%m%d%H%M%S)" \
  -out "$work/ca.pem"

# The server certificate: the name in the subject CN and in the SAN.
keygen "$work/server.key"
openssl req -new -config "$work/openssl.cnf" -key "$work/server.key" \
  -subj "/CN=$name" -out "$work/server.csr"
openssl x509 -req -in "$work/server.csr" -sha256 -days "$days" \
  -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -CAserial "$work/ca.srl" \
  -extfile "$work/openssl.cnf" -extensions leaf \
  -out "$work/server.pem" 2>/dev/null

openssl verify -CAfile "$work/ca.pem" -purpose sslserver "$work/server.pem" >/dev/null ||
  die "the new certificate does not verify against the new CA"

mkdir -p "$out"
install -m 644 "$work/ca.pem" "$out/ca.pem"
install -m 644 "$work/server.pem" "$out/server.pem"
# The chain to serve. A real deployment's chain is the leaf, then its
# intermediates; this CA signs the leaf directly and clients trust ca.pem
# itself, so the chain is the leaf alone.
install -m 644 "$work/server.pem" "$out/fullchain.pem"
install -m 600 "$work/server.key" "$out/server.key"

echo "wrote $out/{ca.pem,server.pem,fullchain.pem,server.key}"
echo "  subjectAltName: $san; valid $days days"
echo "  serve:  dotgate serve --cert $out/fullchain.pem --key $out/server.key ..."
echo "  query:  dotgate query --ca $out/ca.pem --tls-name $name @SERVER[:PORT] example.com"
