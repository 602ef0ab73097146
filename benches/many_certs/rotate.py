# rotate.py OUT N: re-issues certificates t0..t(N-1) of gen.py's OUT, key
# then chain, each by atomic rename (as certbot-like tools do), and prints
# when the writes began and ended.
import datetime, os, sys
from cryptography import x509
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
repo=os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "certs.example"))
out=sys.argv[1]; n=int(sys.argv[2])
ica=x509.load_pem_x509_certificate(open(f"{repo}/intermediate.pem","rb").read())
ikey=serialization.load_pem_private_key(open(f"{repo}/ca-keys/intermediate-ca.key","rb").read(), None)
ica_pem=open(f"{repo}/intermediate.pem","rb").read()
now=datetime.datetime.now(datetime.timezone.utc)
staged=[]
for i in range(n):
    k=ec.generate_private_key(ec.SECP256R1()); name=f"mx.tenant{i}.test"
    c=(x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,name)]))
       .issuer_name(ica.subject).public_key(k.public_key()).serial_number(x509.random_serial_number())
       .not_valid_before(now-datetime.timedelta(days=1)).not_valid_after(now+datetime.timedelta(days=91))
       .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]),False)
       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),False)
       .sign(ikey, hashes.SHA256()))
    staged.append((i,c.public_bytes(serialization.Encoding.PEM)+ica_pem,k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())))
import time
t=time.time()
for i,ch,kp in staged:
    d=f"{out}/t{i}"
    # key first, then chain, each by atomic rename (what certbot-like tools do)
    open(f"{d}/privkey.new","wb").write(kp); os.chmod(f"{d}/privkey.new",0o600); os.rename(f"{d}/privkey.new",f"{d}/privkey.pem")
    open(f"{d}/fullchain.new","wb").write(ch); os.rename(f"{d}/fullchain.new",f"{d}/fullchain.pem")
print(f"writes of {n} rotations took {time.time()-t:.2f} s, ended {datetime.datetime.now(datetime.timezone.utc).isoformat()}")
