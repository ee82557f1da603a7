//! `scripts/build-static`: one binary with no interpreter and no shared library, named after
//! the version it says, beside a SHA256SUMS that `sha256sum -c` accepts.

use super::*;

/// The program headers' types of an ELF64 little-endian file, and the `d_tag`s of its dynamic
/// section (empty if it has none), read as the kernel's loader would (elf(5)).
fn elf_facts(bytes: &[u8]) -> (Vec<u32>, Vec<u64>) {
    let u16_at = |at: usize| u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(bytes[4], 2, "not a 64-bit ELF file");
    assert_eq!(bytes[5], 1, "not a little-endian ELF file");
    let phoff = u64_at(0x20) as usize;
    let phentsize = usize::from(u16_at(0x36));
    let phnum = usize::from(u16_at(0x38));
    let mut types = Vec::new();
    let mut tags = Vec::new();
    for i in 0..phnum {
        let header = phoff + i * phentsize;
        let p_type = u32_at(header);
        types.push(p_type);
        const PT_DYNAMIC: u32 = 2;
        if p_type == PT_DYNAMIC {
            let offset = u64_at(header + 8) as usize;
            let size = u64_at(header + 32) as usize;
            for entry in (offset..offset + size).step_by(16) {
                let tag = u64_at(entry);
                if tag == 0 {
                    break; // DT_NULL
                }
                tags.push(tag);
            }
        }
    }
    (types, tags)
}

#[test]
fn static_binary_has_no_interpreter_nor_shared_library_and_its_sum_checks() {
    let binary = static_binary();
    let name = binary.file_name().unwrap().to_str().unwrap();
    assert_eq!(
        name,
        format!("idlegate-{}-x86_64-unknown-linux-musl", version())
    );
    let (types, tags) = elf_facts(&std::fs::read(binary).expect("reading the binary"));
    const PT_INTERP: u32 = 3;
    const DT_NEEDED: u64 = 1;
    assert!(
        !types.contains(&PT_INTERP),
        "{name} names a program interpreter (PT_INTERP): it is dynamically linked"
    );
    assert!(
        !tags.contains(&DT_NEEDED),
        "{name} needs shared libraries (DT_NEEDED)"
    );
    // What ldd(1) says of it, as a user would check.
    let ldd = run(Command::new("ldd").arg(binary), COMMAND_TIMEOUT);
    let ldd_said = String::from_utf8_lossy(&ldd.stdout) + String::from_utf8_lossy(&ldd.stderr);
    assert!(
        ldd_said.contains("statically linked") || ldd_said.contains("not a dynamic executable"),
        "ldd {name}: {ldd_said}"
    );

    let runs = run(Command::new(binary).arg("--version"), COMMAND_TIMEOUT);
    assert!(runs.status.success(), "{}", said(&runs));
    assert_eq!(
        String::from_utf8_lossy(&runs.stdout).trim(),
        format!("idlegate {}", version())
    );

    let dist = binary.parent().unwrap();
    let sums = std::fs::read_to_string(dist.join("SHA256SUMS")).expect("dist/SHA256SUMS");
    assert!(
        sums.lines().any(|l| l.ends_with(&format!("  {name}"))),
        "SHA256SUMS has no line for {name}: {sums}"
    );
    let check = run(
        Command::new("sha256sum")
            .args(["-c", "--strict", "SHA256SUMS"])
            .current_dir(dist),
        COMMAND_TIMEOUT,
    );
    assert!(check.status.success(), "sha256sum -c: {}", said(&check));
    assert!(
        String::from_utf8_lossy(&check.stdout).contains(&format!("{name}: OK")),
        "{}",
        said(&check)
    );
}
