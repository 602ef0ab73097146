# gen.py N OUT PORT SINK_PORT: N ECDSA leaves (mx.tenantI.test) under the
# demo intermediate (certs.example/), and OUT/proxy.toml serving all of them
# plus mx1 (the default) on 127.0.0.1:PORT in front of smtp-sink.
import datetime, os, sys
from cryptography import x509
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
repo=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "certs.example")
repo=os.path.abspath(repo)
n=int(sys.argv[1]); out=sys.argv[2]; port=sys.argv[3]; sink_port=sys.argv[4]
os.makedirs(out, exist_ok=True)
ica=x509.load_pem_x509_certificate(open(f"{repo}/intermediate.pem","rb").read())
ikey=serialization.load_pem_private_key(open(f"{repo}/ca-keys/intermediate-ca.key","rb").read(), None)
ica_pem=open(f"{repo}/intermediate.pem","rb").read()
now=datetime.datetime.now(datetime.timezone.utc)
conf=[f'''hostname = "mx1.example.test"
[[listener]]
address = "127.0.0.1:{port}"
backend = "b"
[tls]
default_certificate = "mx1"
trust_anchors = "{repo}/ca.pem"
[[certificate]]
name = "mx1"
chain = "{repo}/mx1.example.test/ecdsa/fullchain.pem"
key = "{repo}/mx1.example.test/ecdsa/privkey.pem"
[[backend]]
name = "b"
servers = ["127.0.0.1:{sink_port}"]
[limits]
max_connections = 20000
max_connections_per_ip = 20000
[reload]
events = false
poll_interval = "2s"
''']
for i in range(n):
    k=ec.generate_private_key(ec.SECP256R1())
    name=f"mx.tenant{i}.test"
    c=(x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,name)]))
       .issuer_name(ica.subject).public_key(k.public_key()).serial_number(x509.random_serial_number())
       .not_valid_before(now-datetime.timedelta(days=1)).not_valid_after(now+datetime.timedelta(days=90))
       .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]),False)
       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),False)
       .sign(ikey, hashes.SHA256()))
    d=f"{out}/t{i}"; os.makedirs(d, exist_ok=True)
    open(f"{d}/fullchain.pem","wb").write(c.public_bytes(serialization.Encoding.PEM)+ica_pem)
    kp=f"{d}/privkey.pem"
    open(kp,"wb").write(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(kp,0o600)
    conf.append(f'[[certificate]]\nname = "t{i}"\nchain = "{d}/fullchain.pem"\nkey = "{kp}"\n')
open(f"{out}/proxy.toml","w").write("\n".join(conf))
