//! Test certificates made with `openssl`: a CA, and a server certificate
//! it signs, for the TLS tests of the worker's hub connections and of the
//! gateway's listener.

use std::path::Path;
use std::process::Command;

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const CA_CNF: &str = "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ext\n\
    [dn]\nCN = Tributary test CA\n\
    [ext]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
    subjectKeyIdentifier = hash\n";
const SERVER_EXT: &str = "subjectAltName = DNS:localhost\nbasicConstraints = CA:FALSE\n\
    keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n";
const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

/// `<name>.key` and `<name>.crt` in `dir`: a CA named `subject`.
pub fn ca(dir: &Path, name: &str, subject: &str) {
    std::fs::write(dir.join("ca.cnf"), CA_CNF).unwrap();
    let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
    let mut args = vec!["req", "-x509", "-new", "-nodes", "-days", "2"];
    args.extend(EC);
    args.extend(["-config", "ca.cnf", "-subj", subject]);
    args.extend(["-keyout", &key, "-out", &crt]);
    openssl(dir, &args);
}

/// `server.key` and `server.crt` in `dir`: a certificate for DNS:localhost
/// signed by the CA `<ca>.crt`.
pub fn server(dir: &Path, ca: &str) {
    std::fs::write(dir.join("server.ext"), SERVER_EXT).unwrap();
    let mut args = vec!["req", "-new", "-nodes", "-subj", "/CN=localhost"];
    args.extend(EC);
    args.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(dir, &args);
    let sign = format!(
        "x509 -req -in server.csr -CA {ca}.crt -CAkey {ca}.key -CAcreateserial -days 2 \
         -extfile server.ext -out server.crt"
    );
    openssl(dir, &sign.split_whitespace().collect::<Vec<_>>());
}
