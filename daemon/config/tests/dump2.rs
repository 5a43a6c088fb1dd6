const HEAD: &str = "global:\n  domain: connectopus.test\n  subnet: fd00::/16\n  authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA a]\nnodes:\n  foo:\n    address: fd00::1:1\n";
#[test]
fn dump2() {
    let cases = [
        "    backends:\n      b1:\n        peer: x:1\n",
        "    backends:\n      b1:\n        type: tcp-listener\n        port: \"44\"\n",
        "    backends:\n      b1:\n        type: tcp-listener\n        port: 99999\n",
        "    backends:\n      b1:\n        type: tcp-listener\n",
        "    backends:\n      b1:\n        type: tcp-listener\n        port: 1\n        server_cert_file: /x\n",
        "    backends:\n      b1:\n        type: tcp-dialer\n        peer: a:1\n        cost: 0\n        tls: yes\n",
        "    backends:\n      b1:\n        type: dtls-listener\n        port: 1\n",
        "    backends:\n      b1: {type: dtls-dialer, peer: \"2001:db8::1:44\", psk_file: /x}\n",
        "    backends:\n      b1: {type: dtls-dialer, peer: \"h:44\", psk_file: /x, psk: y}\n",
        "    prefixes: [fd01::/64, 198.18.0.0/15]\n",
        "    tun: {name: averyveryverylongname}\n",
        "  Bad_Name:\n    address: fd00::9\n",
        "  bar:\n    address: fd00::2\n    prefixes: [fd00::/64]\n",
        "    identity: ssh-ed25519 AAAA\n",
        "    tun_devs:\n      foo: {device: ctun, address: fd00::5}\n",
        "    timers: {}\n",
        "  bar:\n    address: fd00::2\n    timers: {keepalive_idle: 3}\n",
    ];
    for c in cases {
        let y = format!("{HEAD}{c}");
        println!("===== \n{c}\n{}\n", connectopus_config::check("m.yml", y.as_bytes()));
    }
    for y in ["", "[]", "global: {}\n", "a: \u{ff}", "key: [unclosed\n", "global:\n  domain: x\n  subnet: fd00::/8\n  timers: {dead_interval: 1s}\nnodes: {}\n"] {
        println!("===== \n{y}\n{}\n", connectopus_config::check("m.yml", y.as_bytes()));
    }
    println!("{}", connectopus_config::check("m.yml", b"a: \xff\xfe\n"));
}
