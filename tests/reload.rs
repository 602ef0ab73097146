//! Certificate hot reload with real files and real handshakes: every way
//! operators and tools replace certificates, a bad replacement, SIGHUP, and
//! handshakes running while the files change.

mod support;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::pki::{self, Leaf};
use support::*;

const RELOAD_WAIT: Duration = Duration::from_secs(15);

/// The standard config plus one certificate per (name, chain, key).
fn config(certs: &[(&str, &Path, &Path)], reload: &str) -> ProxyConfig {
    let mut extra = String::new();
    for (name, chain, key) in certs {
        extra.push_str(&format!(
            "\n[[certificate]]\nname = \"{name}\"\nchain = \"{}\"\nkey = \"{}\"\n",
            chain.display(),
            key.display()
        ));
    }
    // [[certificate]] tables must come before the [log] table that ends the
    // standard config: insert them ahead of [[backend]].
    let c = ProxyConfig::sink();
    let text = c
        .text
        .replacen("[[backend]]", &format!("{extra}\n[[backend]]"), 1);
    ProxyConfig {
        text: format!("{text}\n[reload]\n{reload}\n"),
    }
}

/// The serial of the certificate served for `sni`.
fn served_serial(proxy: &Proxy, sni: &str) -> String {
    let mut c = Smtp::connect(proxy.addr());
    c.expect("220");
    c.cmd("STARTTLS", "220");
    let c = c.start_tls(Some(sni), sni).expect("handshake");
    pki::serial_of(&c.peer_certs[0])
}

fn wait_serial(proxy: &Proxy, sni: &str, serial: &str) {
    wait_for(
        &format!("{sni} to serve serial {serial}"),
        RELOAD_WAIT,
        || (served_serial(proxy, sni) == serial).then_some(()),
    );
}

/// Waits for a reload failure of `cert` whose error contains `needle`
/// (an earlier one may be a half-written pair: chain before key).
fn wait_failure(proxy: &Proxy, cert: &str, needle: &str) -> serde_json::Value {
    wait_for(
        &format!("a reload failure of {cert} with {needle:?}"),
        RELOAD_WAIT,
        || {
            proxy
                .logs_with("certificate reload failed; keeping the last good version")
                .into_iter()
                .find(|e| {
                    e["certificate"] == cert && e["error"].as_str().unwrap_or("").contains(needle)
                })
        },
    )
}

const EVENTS: &str = "debounce = \"100ms\"\npoll_interval = \"7d\"";

fn files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("fullchain.pem"), dir.join("privkey.pem"))
}

#[test]
fn atomic_rename_is_picked_up() {
    let tmp = tempdir();
    let dir = tmp.path().join("rot");
    let first = pki::leaf(&["rot.example.test"]);
    first.write_to(&dir);
    let (chain, key) = files(&dir);
    let mut proxy = Proxy::start(config(&[("rot", &chain, &key)], EVENTS));
    assert_eq!(served_serial(&proxy, "rot.example.test"), first.serial);
    let pid = proxy.pid();

    let second = pki::leaf(&["rot.example.test"]);
    second.write_to(&dir);
    wait_serial(&proxy, "rot.example.test", &second.serial);
    assert!(proxy.alive() && proxy.pid() == pid);
    let ev = proxy.wait_log("certificate reloaded", 1);
    assert_eq!(ev["certificate"], "rot");
}

#[test]
fn in_place_rewrite_is_picked_up() {
    let tmp = tempdir();
    let dir = tmp.path().join("rot");
    pki::leaf(&["rot.example.test"]).write_to(&dir);
    let (chain, key) = files(&dir);
    let proxy = Proxy::start(config(&[("rot", &chain, &key)], EVENTS));
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&chain).unwrap());

    let next = pki::leaf(&["rot.example.test"]);
    std::fs::write(&chain, next.fullchain()).unwrap();
    std::fs::write(&key, &next.key_pem).unwrap();
    assert_eq!(
        inode,
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&chain).unwrap()),
        "same file"
    );
    wait_serial(&proxy, "rot.example.test", &next.serial);
}

/// Kubernetes mounts a secret as `tls.crt -> ..data/tls.crt` and swaps the
/// `..data` symlink to a new timestamped directory.
#[test]
fn kubernetes_secret_data_symlink_swap_is_picked_up() {
    let tmp = tempdir();
    let dir = tmp.path().join("secret");
    std::fs::create_dir_all(&dir).unwrap();
    let write_version = |name: &str, leaf: &Leaf| {
        let v = dir.join(name);
        std::fs::create_dir_all(&v).unwrap();
        std::fs::write(v.join("tls.crt"), leaf.fullchain()).unwrap();
        std::fs::write(v.join("tls.key"), &leaf.key_pem).unwrap();
    };
    let first = pki::leaf(&["rot.example.test"]);
    write_version("..2026_11_23_08_00_00.1", &first);
    symlink("..2026_11_23_08_00_00.1", dir.join("..data")).unwrap();
    symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
    symlink("..data/tls.key", dir.join("tls.key")).unwrap();
    let proxy = Proxy::start(config(
        &[("rot", &dir.join("tls.crt"), &dir.join("tls.key"))],
        EVENTS,
    ));
    assert_eq!(served_serial(&proxy, "rot.example.test"), first.serial);

    let second = pki::leaf(&["rot.example.test"]);
    write_version("..2026_11_23_09_00_00.2", &second);
    symlink("..2026_11_23_09_00_00.2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_11_23_08_00_00.1")).unwrap();
    wait_serial(&proxy, "rot.example.test", &second.serial);
}

/// certbot: `live/NAME/fullchain.pem -> ../../archive/NAME/fullchainN.pem`,
/// renewal writes N+1 in archive/ and moves the live/ links.
#[test]
fn certbot_live_archive_symlinks_are_picked_up() {
    let tmp = tempdir();
    let live = tmp.path().join("live/rot.example.test");
    let archive = tmp.path().join("archive/rot.example.test");
    std::fs::create_dir_all(&live).unwrap();
    std::fs::create_dir_all(&archive).unwrap();
    let issue = |n: u32| {
        let leaf = pki::leaf(&["rot.example.test"]);
        std::fs::write(archive.join(format!("fullchain{n}.pem")), leaf.fullchain()).unwrap();
        std::fs::write(archive.join(format!("privkey{n}.pem")), &leaf.key_pem).unwrap();
        for f in ["fullchain", "privkey"] {
            let tmp_link = live.join(format!("{f}.pem.new"));
            symlink(
                format!("../../archive/rot.example.test/{f}{n}.pem"),
                &tmp_link,
            )
            .unwrap();
            std::fs::rename(&tmp_link, live.join(format!("{f}.pem"))).unwrap();
        }
        leaf
    };
    let first = issue(1);
    let proxy = Proxy::start(config(
        &[(
            "rot",
            &live.join("fullchain.pem"),
            &live.join("privkey.pem"),
        )],
        EVENTS,
    ));
    assert_eq!(served_serial(&proxy, "rot.example.test"), first.serial);
    let second = issue(2);
    wait_serial(&proxy, "rot.example.test", &second.serial);
}

#[test]
fn poll_finds_changes_when_events_are_off() {
    let tmp = tempdir();
    let dir = tmp.path().join("rot");
    pki::leaf(&["rot.example.test"]).write_to(&dir);
    let (chain, key) = files(&dir);
    let proxy = Proxy::start(config(
        &[("rot", &chain, &key)],
        "events = false\ndebounce = \"100ms\"\npoll_interval = \"300ms\"",
    ));
    // Written after the reloader's first look, so only the poll can see it.
    proxy.wait_log("certificate reloader ready", 1);
    let next = pki::leaf(&["rot.example.test"]);
    next.write_to(&dir);
    wait_serial(&proxy, "rot.example.test", &next.serial);
    assert!(
        proxy
            .find_log("certificate files changed or pending retry (poll)")
            .is_some(),
        "{}",
        proxy.all_logs()
    );
}

#[test]
fn sighup_reloads_certificates_and_config() {
    let tmp = tempdir();
    let dir = tmp.path().join("rot");
    let first = pki::leaf(&["rot.example.test"]);
    first.write_to(&dir);
    let (chain, key) = files(&dir);
    // No events, no poll: only SIGHUP can reload.
    let proxy = Proxy::start(config(
        &[("rot", &chain, &key)],
        "events = false\npoll_interval = \"7d\"",
    ));
    let next = pki::leaf(&["rot.example.test"]);
    next.write_to(&dir);
    assert_eq!(
        served_serial(&proxy, "rot.example.test"),
        first.serial,
        "nothing reloads without SIGHUP"
    );
    hup(&proxy);
    wait_serial(&proxy, "rot.example.test", &next.serial);
    proxy.wait_log("config reloaded", 1);

    // A broken config is refused and the proxy keeps serving.
    let path = proxy.dir.path().join("proxy.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("[tls]", "[tls]\nbogus = 1")).unwrap();
    hup(&proxy);
    proxy.wait_log(
        "config reload failed; still running on the previous config and certificates",
        1,
    );
    assert_eq!(served_serial(&proxy, "rot.example.test"), next.serial);

    // A new certificate in the config is served after SIGHUP; a changed
    // listener is named as needing a restart.
    let extra_dir = tmp.path().join("extra");
    let extra = pki::leaf(&["new.example.test"]);
    extra.write_to(&extra_dir);
    let (ec, ek) = files(&extra_dir);
    let text = good
        .replacen(
            "[[backend]]",
            &format!(
                "[[certificate]]\nname = \"extra\"\nchain = \"{}\"\nkey = \"{}\"\n\n[[backend]]",
                ec.display(),
                ek.display()
            ),
            1,
        )
        .replace("address = \"127.0.0.1:0\"", "address = \"127.0.0.2:0\"");
    std::fs::write(&path, text).unwrap();
    hup(&proxy);
    proxy.wait_log("config reloaded", 2);
    assert_eq!(served_serial(&proxy, "new.example.test"), extra.serial);
    let w = proxy.wait_log(
        "these settings changed but only take effect after a restart",
        1,
    );
    assert_eq!(w["changed"], "listeners");
}

fn hup(proxy: &Proxy) {
    let st = std::process::Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn a_bad_replacement_keeps_the_last_good_certificate_and_others_still_reload() {
    let tmp = tempdir();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let a1 = pki::leaf(&["a.rotate.test"]);
    let b1 = pki::leaf(&["b.rotate.test"]);
    a1.write_to(&a_dir);
    b1.write_to(&b_dir);
    let (ac, ak) = files(&a_dir);
    let (bc, bk) = files(&b_dir);
    let proxy = Proxy::start(config(&[("a", &ac, &ak), ("b", &bc, &bk)], EVENTS));

    // a: an expired replacement.
    pki::leaf_valid(&["a.rotate.test"], (2020, 1, 1), (2021, 1, 1)).write_to(&a_dir);
    let ev = wait_failure(&proxy, "a", "expired");
    assert_eq!(ev["serving_serial"], a1.serial);
    assert_eq!(served_serial(&proxy, "a.rotate.test"), a1.serial);

    // b rotates normally meanwhile; a still serves its last good version.
    let b2 = pki::leaf(&["b.rotate.test"]);
    b2.write_to(&b_dir);
    wait_serial(&proxy, "b.rotate.test", &b2.serial);
    assert_eq!(served_serial(&proxy, "a.rotate.test"), a1.serial);

    // A good file for a again is taken.
    let a2 = pki::leaf(&["a.rotate.test"]);
    a2.write_to(&a_dir);
    wait_serial(&proxy, "a.rotate.test", &a2.serial);
}

/// 20 clients handshake in a loop while `swap` runs; none may fail.
fn handshakes_never_fail_while(proxy: &Arc<Proxy>, swap: impl FnOnce()) -> usize {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let (proxy, stop, ok) = (proxy.clone(), stop.clone(), ok.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let mut c = Smtp::connect(proxy.addr());
                    c.expect("220");
                    c.cmd("STARTTLS", "220");
                    match c.start_tls(Some("rot.example.test"), "rot.example.test") {
                        Ok(mut c) => {
                            c.cmd("NOOP", "250");
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                failures
            })
        })
        .collect();
    swap();
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(
        failures.is_empty(),
        "{} handshakes failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    ok.load(Ordering::Relaxed)
}

#[test]
fn no_handshake_fails_while_certificates_rotate() {
    let tmp = tempdir();
    let dir = tmp.path().join("rot");
    let versions = [
        pki::leaf(&["rot.example.test"]),
        pki::leaf(&["rot.example.test"]),
    ];
    versions[0].write_to(&dir);
    let (chain, key) = files(&dir);
    let proxy = Arc::new(Proxy::start(config(
        &[("rot", &chain, &key)],
        "debounce = \"50ms\"\npoll_interval = \"7d\"",
    )));
    let n = handshakes_never_fail_while(&proxy, || {
        for i in 1..=50 {
            let v = &versions[i % 2];
            v.write_to(&dir);
            wait_serial(&proxy, "rot.example.test", &v.serial);
        }
    });
    let reloads = proxy.logs_with("certificate reloaded").len();
    assert!(reloads >= 50, "only {reloads} reloads");
    println!("{n} handshakes during 50 rotations, none failed");
}

#[test]
fn no_handshake_fails_during_unsynchronised_in_place_rewrites() {
    // Files rewritten in place, chain and key one after the other, as fast
    // as possible: the reloader sees half-written files and mismatched
    // pairs, refuses them, and clients only ever get a whole, valid chain.
    let tmp = tempdir();
    let dir = tmp.path().join("rot");
    let versions = [
        pki::leaf(&["rot.example.test"]),
        pki::leaf(&["rot.example.test"]),
    ];
    versions[0].write_to(&dir);
    let (chain, key) = files(&dir);
    let proxy = Arc::new(Proxy::start(config(
        &[("rot", &chain, &key)],
        "debounce = \"10ms\"\npoll_interval = \"7d\"",
    )));
    handshakes_never_fail_while(&proxy, || {
        for i in 1..=50 {
            let v = &versions[i % 2];
            std::fs::write(&chain, v.fullchain()).unwrap();
            std::fs::write(&key, &v.key_pem).unwrap();
        }
    });
    // It settles on the last version written.
    wait_serial(&proxy, "rot.example.test", &versions[0].serial);
}

#[test]
fn a_clashing_rotation_is_refused_and_does_not_block_the_others() {
    let tmp = tempdir();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let a1 = pki::leaf(&["a.rotate.test"]);
    a1.write_to(&a_dir);
    pki::leaf(&["b.rotate.test"]).write_to(&b_dir);
    let (ac, ak) = files(&a_dir);
    let (bc, bk) = files(&b_dir);
    let proxy = Proxy::start(config(&[("a", &ac, &ak), ("b", &bc, &bk)], EVENTS));
    // a now also claims b's name with the same key type: refused.
    pki::leaf(&["a.rotate.test", "b.rotate.test"]).write_to(&a_dir);
    wait_failure(&proxy, "a", "covered by two");
    assert_eq!(served_serial(&proxy, "a.rotate.test"), a1.serial);
    // b still rotates.
    let b2 = pki::leaf(&["b.rotate.test"]);
    b2.write_to(&b_dir);
    wait_serial(&proxy, "b.rotate.test", &b2.serial);
}

#[test]
fn a_rotation_refused_as_not_yet_valid_is_taken_once_it_is() {
    let tmp = tempdir();
    let dir = tmp.path().join("rot");
    pki::leaf(&["rot.example.test"]).write_to(&dir);
    let (chain, key) = files(&dir);
    let proxy = Proxy::start(config(
        &[("rot", &chain, &key)],
        "debounce = \"100ms\"\npoll_interval = \"500ms\"",
    ));
    // Issued by a CA whose clock is 3 s ahead.
    let early = pki::leaf_not_before_in(&["rot.example.test"], 3);
    early.write_to(&dir);
    wait_failure(&proxy, "rot", "not valid before");
    // Nothing changes on disk; the retry on the poll takes it when due.
    wait_serial(&proxy, "rot.example.test", &early.serial);
}

#[test]
fn a_directory_deleted_and_recreated_is_still_watched() {
    let tmp = tempdir();
    let dir = tmp.path().join("rot");
    pki::leaf(&["rot.example.test"]).write_to(&dir);
    let (chain, key) = files(&dir);
    let proxy = Proxy::start(config(&[("rot", &chain, &key)], EVENTS));
    for _ in 0..2 {
        std::fs::remove_dir_all(&dir).unwrap();
        let next = pki::leaf(&["rot.example.test"]);
        next.write_to(&dir);
        wait_serial(&proxy, "rot.example.test", &next.serial);
    }
    // And a rename inside the recreated directory still reloads.
    let last = pki::leaf(&["rot.example.test"]);
    last.write_to(&dir);
    wait_serial(&proxy, "rot.example.test", &last.serial);
}

#[test]
fn a_symlink_in_the_middle_of_the_path_is_followed() {
    // chain = base/current/fullchain.pem with current -> rel1, then -> rel2.
    let tmp = tempdir();
    let base = tmp.path().join("base");
    let first = pki::leaf(&["rot.example.test"]);
    first.write_to(&base.join("rel1"));
    symlink("rel1", base.join("current")).unwrap();
    let (chain, key) = files(&base.join("current"));
    let proxy = Proxy::start(config(&[("rot", &chain, &key)], EVENTS));
    assert_eq!(served_serial(&proxy, "rot.example.test"), first.serial);
    let second = pki::leaf(&["rot.example.test"]);
    second.write_to(&base.join("rel2"));
    symlink("rel2", base.join("current.new")).unwrap();
    std::fs::rename(base.join("current.new"), base.join("current")).unwrap();
    wait_serial(&proxy, "rot.example.test", &second.serial);
}

#[test]
fn a_file_written_in_two_steps_within_the_debounce_is_loaded_once_whole() {
    let tmp = tempdir();
    let dir = tmp.path().join("rot");
    pki::leaf(&["rot.example.test"]).write_to(&dir);
    let (chain, key) = files(&dir);
    let proxy = Proxy::start(config(
        &[("rot", &chain, &key)],
        "debounce = \"1s\"\npoll_interval = \"7d\"",
    ));
    proxy.wait_log("certificate reloader ready", 1);
    let next = pki::leaf(&["rot.example.test"]);
    // Key first (atomically), then the chain written in two halves 100 ms
    // apart, as a slow writer would: the debounce must wait for the end.
    pki::write_key_atomic(&key, next.key_pem.as_bytes());
    let full = next.fullchain();
    let (head, tail) = full.split_at(full.len() / 2);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&chain).unwrap();
        f.write_all(head.as_bytes()).unwrap();
        f.sync_all().unwrap();
        std::thread::sleep(Duration::from_millis(100)); // the slow writer, not synchronisation
        f.write_all(tail.as_bytes()).unwrap();
    }
    wait_serial(&proxy, "rot.example.test", &next.serial);
    assert!(
        proxy
            .logs_with("certificate reload failed; keeping the last good version")
            .is_empty(),
        "a half-written file was loaded: {}",
        proxy.all_logs()
    );
}

#[test]
fn sighup_keeps_a_renamed_certificate_whose_files_are_bad() {
    let tmp = tempdir();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let a1 = pki::leaf(&["a.rotate.test"]);
    a1.write_to(&a_dir);
    pki::leaf(&["b.rotate.test"]).write_to(&b_dir);
    let (ac, ak) = files(&a_dir);
    let (bc, bk) = files(&b_dir);
    let proxy = Proxy::start(config(
        &[("a", &ac, &ak), ("b", &bc, &bk)],
        "events = false\npoll_interval = \"7d\"",
    ));
    // a's files go bad, b rotates, a is renamed in the config; SIGHUP.
    pki::leaf_valid(&["a.rotate.test"], (2020, 1, 1), (2021, 1, 1)).write_to(&a_dir);
    let b2 = pki::leaf(&["b.rotate.test"]);
    b2.write_to(&b_dir);
    let path = proxy.dir.path().join("proxy.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("name = \"a\"", "name = \"a-renamed\"");
    std::fs::write(&path, text).unwrap();
    hup(&proxy);
    proxy.wait_log("config reloaded", 1);
    assert_eq!(served_serial(&proxy, "b.rotate.test"), b2.serial);
    assert_eq!(served_serial(&proxy, "a.rotate.test"), a1.serial);
}

#[test]
fn a_rotated_in_key_readable_by_others_is_warned_on_reload() {
    let tmp = tempdir();
    let dir = tmp.path().join("rot");
    pki::leaf(&["rot.example.test"]).write_to(&dir);
    let (chain, key) = files(&dir);
    let proxy = Proxy::start(config(&[("rot", &chain, &key)], EVENTS));
    let warning = format!(
        "private key file {k} has mode 0644: readable by group and others; fix: chmod 600 {k}",
        k = key.display()
    );
    proxy.wait_log("certificate reloader ready", 1);
    assert!(proxy.find_log(&warning).is_none(), "0600 at start");

    // A renewal hook writing the new key with the default umask.
    let next = pki::leaf(&["rot.example.test"]);
    let tmp_key = dir.join("privkey.new");
    std::fs::write(&tmp_key, &next.key_pem).unwrap();
    std::fs::set_permissions(
        &tmp_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    std::fs::rename(&tmp_key, &key).unwrap();
    pki::write_atomic(&chain, next.fullchain().as_bytes());
    wait_serial(&proxy, "rot.example.test", &next.serial);
    let ev = proxy.wait_log(&warning, 1);
    assert_eq!(
        (&ev["level"], &ev["certificate"]),
        (&"WARN".into(), &"rot".into()),
        "{ev}"
    );
}
