//! Steering eBPF on TUN devices: the kernel puts each packet it sends into a device on the queue
//! of the gateway worker whose shard owns it, so that workers need not hand packets over.
//!
//! Contract: [`Program::load`] builds and loads (bpf(2) `BPF_PROG_LOAD`) a
//! `BPF_PROG_TYPE_SOCKET_FILTER` program that computes, for a packet the kernel is about to put
//! into a device of one side, what [`Sharding::owner`] computes for it: the remote endpoint's
//! [`idlegate_core::shard::endpoint_hash`] keyed with the sharding's seed, `% count` (Outside:
//! the packet's source; Inside: its destination). [`Program::attach`] sets it on a device with
//! `TUNSETSTEERINGEBPF`; the device then takes `(u16) result % numqueues` as the queue, instead
//! of its own flow hash and the queue a flow was last written from. A packet the program cannot
//! place cheaply (not TCP or UDP, an IPv4 fragment after the first, IPv6 with an extension
//! header, an ICMP error) goes to the queue the same keyed hash gives its two addresses
//! (source then destination, [`unplaced_queue`]), spread as the kernel's own flow hash would
//! spread it, so that no one can aim a flood of such packets at one worker's queue; whoever
//! reads it finds its owner with [`Sharding::owner_of`] and hands it over, as without the
//! program. What it cannot read at all (too short, not IPv4 or IPv6) goes to queue 0.
//! [`Program::test_run`] runs it on a frame (`BPF_PROG_TEST_RUN`), for tests.
//!
//! The result is a queue *index*, so queue `w` of every device must be worker `w`'s: a TUN
//! queue's index is the order it was attached in (`tun_attach` gives it `numqueues`), which
//! [`crate::sys::tun::Tun::create_queues`] keeps in its vector, and detaching a queue moves the
//! last one into its place. The gateway hands queue `w` of every device to worker `w` and
//! detaches none while it runs.
//!
//! The program (about 60 instructions) is written here with a small instruction builder rather
//! than with a crate: aya and libbpf-rs load an ELF object compiled for the BPF target (a second
//! toolchain, bpf-linker or clang, in the build), and rbpf's assembler and builder come with a
//! userspace VM and JIT idlegate does not need; the encoding is eight bytes an instruction and
//! this program uses a dozen opcodes. It reads the packet with `LD_ABS`/`LD_IND` (`R6` holds the
//! context; on a TUN device without packet information the packet starts at the network header),
//! calls no helper, so any license string is accepted and it needs no BTF.
//!
//! Loading needs CAP_BPF (or CAP_SYS_ADMIN) unless `kernel.unprivileged_bpf_disabled` is 0;
//! attaching needs only the device's descriptor. Linux only, as TUN devices are.

use crate::sys::errno::errno_name;
use crate::sys::tun::Tun;
use anyhow::{anyhow, Result};
use idlegate_core::shard::{endpoint_hash, FINAL_MULTIPLIER, FINAL_SHIFT, ROUND_MULTIPLIER};
use idlegate_core::{Interface, Sharding};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Whether the gateway tries to steer: yes unless `IDLEGATE_TUN_STEERING` is `0` or `off`
/// (which keeps the kernel's own queue choice and the handover, for tests and comparison).
pub fn wanted() -> bool {
    !matches!(
        std::env::var("IDLEGATE_TUN_STEERING").as_deref(),
        Ok("0") | Ok("off")
    )
}

/// A steering program loaded into the kernel; unloaded when dropped and no device holds it.
pub struct Program {
    fd: OwnedFd,
}

impl Program {
    /// Loads the program for packets put into devices of side `side`, sharded as `sharding`.
    /// The error says why the kernel refused (with the verifier's last words, if it spoke).
    pub fn load(sharding: &Sharding, side: Interface) -> Result<Program> {
        let code = instructions(sharding, side);
        match load(&code, None) {
            Ok(fd) => Ok(Program { fd }),
            Err(e) => {
                let mut log = vec![0u8; 64 * 1024];
                let why = match load(&code, Some(&mut log)) {
                    Ok(_) => String::new(),
                    Err(_) => verifier_words(&log),
                };
                let side = match side {
                    Interface::Outside => "outside",
                    Interface::Inside => "inside",
                };
                Err(anyhow!(
                    "loading the {side} steering program (bpf BPF_PROG_LOAD): {}{why}",
                    describe(&e)
                ))
            }
        }
    }

    /// Makes `device` (any of its queues) steer by this program (`TUNSETSTEERINGEBPF`).
    pub fn attach(&self, device: &Tun) -> Result<()> {
        let prog: libc::c_int = self.fd.as_raw_fd();
        // SAFETY: TUNSETSTEERINGEBPF reads one int (a program descriptor) from the pointer,
        // which points at a live local; the device descriptor is open for `device`'s lifetime.
        let rc = unsafe {
            libc::ioctl(
                device.as_raw_fd(),
                libc::TUNSETSTEERINGEBPF,
                &prog as *const libc::c_int,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(anyhow!(
                "setting the steering program on TUN device {} (TUNSETSTEERINGEBPF): {}",
                device.name(),
                describe(&e)
            ));
        }
        Ok(())
    }

    /// Takes whatever steering program `device` has off it: the kernel picks queues by its own
    /// hash again.
    pub fn detach(device: &Tun) -> Result<()> {
        let none: libc::c_int = -1;
        // SAFETY: as in `attach`; -1 tells the kernel to drop the device's program.
        let rc = unsafe {
            libc::ioctl(
                device.as_raw_fd(),
                libc::TUNSETSTEERINGEBPF,
                &none as *const libc::c_int,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(anyhow!(
                "taking the steering program off TUN device {}: {}",
                device.name(),
                describe(&e)
            ));
        }
        Ok(())
    }

    /// Runs the program once on `frame`, an Ethernet frame (the kernel strips its header, so
    /// the program sees the packet at the network header, as on a TUN device), and gives what
    /// it returned (`BPF_PROG_TEST_RUN`).
    pub fn test_run(&self, frame: &[u8]) -> io::Result<u32> {
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: u32::try_from(frame.len())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
            data_in: frame.as_ptr() as u64,
            repeat: 1,
            ..TestRunAttr::default()
        };
        // SAFETY: the attribute is a properly sized, zero-padded `union bpf_attr` prefix for
        // BPF_PROG_TEST_RUN; the kernel reads `frame` (alive for the call) and writes `retval`
        // and `duration` into `attr`, which we own; no output buffer is given.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                std::mem::size_of::<TestRunAttr>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(attr.retval)
    }
}

/// An errno's name and text: "EPERM (permission denied)", with what it most likely means here.
fn describe(e: &io::Error) -> String {
    let (name, meaning) = match e.raw_os_error() {
        Some(libc::EPERM) => ("EPERM", "no CAP_BPF or CAP_SYS_ADMIN, or a seccomp filter"),
        Some(libc::EACCES) => ("EACCES", "the verifier refused the program"),
        Some(libc::EINVAL) => ("EINVAL", "this kernel does not take it"),
        Some(libc::ENOSYS) => ("ENOSYS", "no bpf system call in this kernel"),
        Some(libc::ENOTTY) => ("ENOTTY", "not a TUN device, or a kernel before 4.16"),
        _ => return format!("{} ({e})", errno_name(e)),
    };
    format!("{name} ({meaning})")
}

/// The verifier log's last non-empty lines, as ": the verifier said: …", or nothing.
fn verifier_words(log: &[u8]) -> String {
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = &lines[lines.len().saturating_sub(3)..];
    format!("; the verifier said: {}", tail.join(" / "))
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
/// No helper is called, so no GPL-only one: any license string is accepted.
const LICENSE: &[u8] = b"MIT\0";

/// `union bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type` (linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN, up to `batch_size` (linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// BPF_PROG_LOAD of `code`, with the verifier's log into `log` if given.
fn load(code: &[Insn], log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
    let mut name = [0u8; 16];
    name[..14].copy_from_slice(b"idlegate_steer");
    let (log_level, log_size, log_buf) = match log {
        Some(buf) => (1, buf.len() as u32, buf.as_mut_ptr() as u64),
        None => (0, 0, 0),
    };
    let attr = LoadAttr {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: code.len() as u32,
        insns: code.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        prog_name: name,
        ..LoadAttr::default()
    };
    // SAFETY: the attribute is a zero-padded `union bpf_attr` prefix for BPF_PROG_LOAD; the
    // kernel reads the instructions and the NUL-terminated license (both alive for the call)
    // and writes at most `log_size` bytes of log into the caller's buffer.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const LoadAttr,
            std::mem::size_of::<LoadAttr>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a successful BPF_PROG_LOAD returns a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// One eBPF instruction as the kernel reads it (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// `dst_reg:4, src_reg:4`, as the C bitfields lay them out on this machine.
    regs: u8,
    off: i16,
    imm: i32,
}

#[derive(Debug, Clone, Copy)]
enum Reg {
    R0 = 0,
    R1 = 1,
    R6 = 6,
    R7 = 7,
    R8 = 8,
    R9 = 9,
}

// Instruction classes, sizes, modes, operations (linux/bpf_common.h, linux/bpf.h).
const LD: u8 = 0x00;
const JMP: u8 = 0x05;
const ALU64: u8 = 0x07;
const W: u8 = 0x00;
const H: u8 = 0x08;
const B: u8 = 0x10;
const DW: u8 = 0x18;
const IMM: u8 = 0x00;
const ABS: u8 = 0x20;
const IND: u8 = 0x40;
const K: u8 = 0x00;
const X: u8 = 0x08;
const MUL: u8 = 0x20;
const AND: u8 = 0x50;
const LSH: u8 = 0x60;
const RSH: u8 = 0x70;
const MOD: u8 = 0x90;
const XOR: u8 = 0xa0;
const MOV: u8 = 0xb0;
const JA: u8 = 0x00;
const JEQ: u8 = 0x10;
const JNE: u8 = 0x50;
const EXIT: u8 = 0x90;

fn insn(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
    let (dst, src) = (dst as u8, src as u8);
    let regs = if cfg!(target_endian = "little") {
        (src << 4) | dst
    } else {
        (dst << 4) | src
    };
    Insn {
        code,
        regs,
        off,
        imm,
    }
}

/// A jump's target, placed later with [`Asm::place`].
#[derive(Clone, Copy)]
struct Label(usize);

/// The instructions so far, and the jumps still to aim.
#[derive(Default)]
struct Asm {
    code: Vec<Insn>,
    /// Where each label was placed.
    places: Vec<Option<usize>>,
    /// Jumps (their index) to a label.
    jumps: Vec<(usize, Label)>,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.places.push(None);
        Label(self.places.len() - 1)
    }

    fn place(&mut self, label: Label) {
        self.places[label.0] = Some(self.code.len());
    }

    fn alu(&mut self, op: u8, dst: Reg, imm: i32) {
        self.code.push(insn(ALU64 | op | K, dst, Reg::R0, 0, imm));
    }

    fn alu_reg(&mut self, op: u8, dst: Reg, src: Reg) {
        self.code.push(insn(ALU64 | op | X, dst, src, 0, 0));
    }

    /// `dst = value`, all 64 bits (two instruction slots).
    fn load_u64(&mut self, dst: Reg, value: u64) {
        self.code
            .push(insn(LD | DW | IMM, dst, Reg::R0, 0, value as u32 as i32));
        self.code
            .push(insn(0, Reg::R0, Reg::R0, 0, (value >> 32) as u32 as i32));
    }

    /// `R0 = the packet's big-endian value of `size` at `offset`` (the program ends, returning
    /// 0, if the packet is shorter).
    fn load_abs(&mut self, size: u8, offset: i32) {
        self.code
            .push(insn(LD | ABS | size, Reg::R0, Reg::R0, 0, offset));
    }

    /// [`Asm::load_abs`] at `base + offset`.
    fn load_ind(&mut self, size: u8, base: Reg, offset: i32) {
        self.code
            .push(insn(LD | IND | size, Reg::R0, base, 0, offset));
    }

    fn jump_if(&mut self, op: u8, reg: Reg, imm: i32, to: Label) {
        self.jumps.push((self.code.len(), to));
        self.code.push(insn(JMP | op | K, reg, Reg::R0, 0, imm));
    }

    fn jump(&mut self, to: Label) {
        self.jumps.push((self.code.len(), to));
        self.code.push(insn(JMP | JA, Reg::R0, Reg::R0, 0, 0));
    }

    fn exit(&mut self) {
        self.code.push(insn(JMP | EXIT, Reg::R0, Reg::R0, 0, 0));
    }

    /// The instructions, each jump aimed at its label.
    fn finish(mut self) -> Vec<Insn> {
        for &(at, label) in &self.jumps {
            // Every label is placed by `instructions`, and the program is far shorter than
            // i16::MAX: an unplaced label would be a bug here, caught by the tests' loads.
            debug_assert!(
                self.places[label.0].is_some(),
                "a jump to an unplaced label"
            );
            let target = self.places[label.0].unwrap_or(at + 1);
            self.code[at].off = (target as i64 - at as i64 - 1) as i16;
        }
        self.code
    }
}

/// Registers: R6 the context (`LD_ABS` needs it there), R7 the hash, R8 the IPv4 header's
/// length, R9 [`ROUND_MULTIPLIER`]; `LD_ABS` and `LD_IND` put their value in R0 and clobber
/// R1–R5.
const HASH: Reg = Reg::R7;
const IHL: Reg = Reg::R8;
const MULTIPLIER: Reg = Reg::R9;

/// One round of [`idlegate_core::shard::endpoint_hash`] with the word in R0.
fn round(a: &mut Asm) {
    a.alu_reg(XOR, HASH, Reg::R0);
    a.alu_reg(MUL, HASH, MULTIPLIER);
    a.alu_reg(MOV, Reg::R0, HASH);
    a.alu(RSH, Reg::R0, 32);
    a.alu_reg(XOR, HASH, Reg::R0);
}

/// The steering program for packets put into devices of side `side`: see the module's text.
pub fn instructions(sharding: &Sharding, side: Interface) -> Vec<Insn> {
    // Where the remote endpoint is: the source of what arrives from outside, the destination
    // of what arrives from inside.
    let (v4_address, port, v6_address) = match side {
        Interface::Outside => (12, 0, 8),
        Interface::Inside => (16, 2, 24),
    };
    let count = i32::try_from(sharding.count()).unwrap_or(i32::MAX);
    let mut a = Asm::default();
    let (v4, v4_transport, v6, v6_transport, finish, fixed) = (
        a.label(),
        a.label(),
        a.label(),
        a.label(),
        a.label(),
        a.label(),
    );
    let (v4_pair, v6_pair) = (a.label(), a.label());
    a.alu_reg(MOV, Reg::R6, Reg::R1);
    a.load_abs(B, 0);
    a.alu_reg(MOV, IHL, Reg::R0);
    a.alu(RSH, IHL, 4);
    a.jump_if(JEQ, IHL, 4, v4);
    a.jump_if(JEQ, IHL, 6, v6);
    a.jump(fixed);

    // IPv4: R0 still holds the first byte.
    a.place(v4);
    a.alu(AND, Reg::R0, 0x0f);
    a.alu(LSH, Reg::R0, 2);
    a.alu_reg(MOV, IHL, Reg::R0);
    // A fragment after the first has no ports.
    a.load_abs(H, 6);
    a.alu(AND, Reg::R0, 0x1fff);
    a.jump_if(JNE, Reg::R0, 0, v4_pair);
    a.load_abs(B, 9);
    a.jump_if(JEQ, Reg::R0, 6, v4_transport);
    a.jump_if(JNE, Reg::R0, 17, v4_pair);
    a.place(v4_transport);
    a.load_u64(MULTIPLIER, ROUND_MULTIPLIER);
    a.load_u64(HASH, sharding.seed());
    a.load_abs(W, v4_address);
    round(&mut a);
    a.load_ind(H, IHL, port);
    round(&mut a);
    a.jump(finish);

    // IPv6: the transport header right after the fixed header, or no place.
    a.place(v6);
    a.load_abs(B, 6);
    a.jump_if(JEQ, Reg::R0, 6, v6_transport);
    a.jump_if(JNE, Reg::R0, 17, v6_pair);
    a.place(v6_transport);
    a.load_u64(MULTIPLIER, ROUND_MULTIPLIER);
    a.load_u64(HASH, sharding.seed());
    for word in 0..4 {
        a.load_abs(W, v6_address + 4 * word);
        round(&mut a);
    }
    a.load_abs(H, 40 + port);
    round(&mut a);
    a.jump(finish);

    // No ports to read: both addresses, source then destination ([`unplaced_queue`]).
    a.place(v4_pair);
    a.load_u64(MULTIPLIER, ROUND_MULTIPLIER);
    a.load_u64(HASH, sharding.seed());
    for word in 0..2 {
        a.load_abs(W, 12 + 4 * word);
        round(&mut a);
    }
    a.jump(finish);
    a.place(v6_pair);
    a.load_u64(MULTIPLIER, ROUND_MULTIPLIER);
    a.load_u64(HASH, sharding.seed());
    for word in 0..8 {
        a.load_abs(W, 8 + 4 * word);
        round(&mut a);
    }

    a.place(finish);
    a.alu_reg(MOV, Reg::R0, HASH);
    a.alu(RSH, Reg::R0, FINAL_SHIFT as i32);
    a.alu_reg(XOR, HASH, Reg::R0);
    a.load_u64(MULTIPLIER, FINAL_MULTIPLIER);
    a.alu_reg(MUL, HASH, MULTIPLIER);
    a.alu_reg(MOV, Reg::R0, HASH);
    a.alu(RSH, Reg::R0, 32);
    a.alu_reg(XOR, HASH, Reg::R0);
    a.alu_reg(MOV, Reg::R0, HASH);
    a.alu(MOD, Reg::R0, count);
    a.exit();

    a.place(fixed);
    a.alu(MOV, Reg::R0, 0);
    a.exit();
    a.finish()
}

/// The queue the program gives an IP packet it cannot place (see the module's text): the
/// sharding's keyed [`endpoint_hash`] over its source and destination addresses as big-endian
/// words, `% count`; `None` if `packet` is too short to hold them or not IPv4 or IPv6.
pub fn unplaced_queue(sharding: &Sharding, packet: &[u8]) -> Option<usize> {
    let addresses = match packet.first()? >> 4 {
        4 => packet.get(12..20)?,
        6 => packet.get(8..40)?,
        _ => return None,
    };
    let mut words = [0u32; 8];
    let n = addresses.len() / 4;
    for (word, bytes) in words.iter_mut().zip(addresses.chunks_exact(4)) {
        *word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
    let hash = endpoint_hash(sharding.seed(), &words[..n]);
    Some((hash % sharding.count() as u64) as usize)
}

#[cfg(test)]
mod tests {
    //! The program run by a small interpreter of the instructions it uses, against
    //! [`Sharding::owner`], without root (the kernel runs it in the end-to-end tests,
    //! `tests/e2e/steering.rs`).
    use super::*;

    /// Runs `code` on `packet` as the kernel would on a TUN device: what it returns.
    fn run(code: &[Insn], packet: &[u8]) -> u64 {
        let mut r = [0u64; 11];
        let mut pc = 0;
        let read = |at: u64, size: u8| -> Option<u64> {
            let len = match size {
                W => 4,
                H => 2,
                _ => 1,
            };
            let at = usize::try_from(at).ok()?;
            let bytes = packet.get(at..at + len)?;
            Some(bytes.iter().fold(0, |v, &b| (v << 8) | u64::from(b)))
        };
        loop {
            let i = code[pc];
            let (dst, src) = (usize::from(i.regs & 0x0f), usize::from(i.regs >> 4));
            let imm = i.imm as i64 as u64;
            pc += 1;
            match i.code {
                c if c == LD | DW | IMM => {
                    r[dst] = u64::from(i.imm as u32) | (u64::from(code[pc].imm as u32) << 32);
                    pc += 1;
                }
                c if c & 0xe7 == LD | ABS || c & 0xe7 == LD | IND => {
                    let base = if c & IND != 0 { r[src] } else { 0 };
                    match read(base.wrapping_add(imm), c & 0x18) {
                        Some(v) => r[0] = v,
                        None => return 0,
                    }
                }
                c if c & 0x07 == ALU64 => {
                    let operand = if c & X != 0 { r[src] } else { imm };
                    r[dst] = match c & 0xf0 {
                        MOV => operand,
                        XOR => r[dst] ^ operand,
                        AND => r[dst] & operand,
                        MUL => r[dst].wrapping_mul(operand),
                        LSH => r[dst] << operand,
                        RSH => r[dst] >> operand,
                        MOD => r[dst] % operand,
                        op => panic!("ALU op {op:#x}"),
                    };
                }
                c if c == JMP | EXIT => return r[0],
                c if c & 0x07 == JMP => {
                    let taken = match c & 0xf0 {
                        JA => true,
                        JEQ => r[dst] == imm,
                        JNE => r[dst] != imm,
                        op => panic!("JMP op {op:#x}"),
                    };
                    if taken {
                        pc = (pc as i64 + i64::from(i.off)) as usize;
                    }
                }
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    fn tcp_or_udp(protocol: u8, ports: [u8; 4]) -> Vec<u8> {
        let mut l4 = ports.to_vec();
        l4.resize(if protocol == 6 { 20 } else { 8 }, 0);
        if protocol == 6 {
            l4[12] = 0x50;
        } else {
            l4[5] = 8;
        }
        l4
    }

    fn ipv4(protocol: u8, addresses: [u8; 8], fragment: u16, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, protocol, 0, 0];
        p[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        p[6..8].copy_from_slice(&fragment.to_be_bytes());
        p.extend_from_slice(&addresses);
        let sum = !p
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .fold(0u32, |s, w| {
                let s = s + w;
                (s & 0xffff) + (s >> 16)
            }) as u16;
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p.extend_from_slice(l4);
        p
    }

    fn ipv6(next: u8, addresses: [u8; 32], l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, next, 64];
        p[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
        p.extend_from_slice(&addresses);
        p.extend_from_slice(l4);
        p
    }

    #[test]
    fn the_program_names_the_shard_the_engine_names() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for count in 2..=8 {
            let sharding = Sharding::new(count, next());
            for side in [Interface::Outside, Interface::Inside] {
                let code = instructions(&sharding, side);
                for i in 0..500 {
                    let protocol = if i % 2 == 0 { 6 } else { 17 };
                    let l4 = tcp_or_udp(protocol, (next() as u32).to_be_bytes());
                    let packet = if i % 4 < 2 {
                        let first_fragment = if i % 8 == 1 { 0x2000 } else { 0 };
                        ipv4(protocol, next().to_be_bytes(), first_fragment, &l4)
                    } else {
                        let mut a = [0u8; 32];
                        for chunk in a.chunks_mut(8) {
                            chunk.copy_from_slice(&next().to_be_bytes());
                        }
                        ipv6(protocol, a, &l4)
                    };
                    let owner = sharding.owner(&packet, side).expect("an owner");
                    assert_eq!(run(&code, &packet), owner as u64, "{side:?} {packet:02x?}");
                }
            }
        }
    }

    #[test]
    fn what_the_program_cannot_place_is_spread_by_its_addresses_not_aimed_at_queue_0() {
        let sharding = Sharding::new(4, 99);
        let udp = tcp_or_udp(17, [1, 2, 3, 4]);
        let mut hop_by_hop = vec![17, 0, 1, 4, 0, 0, 0, 0];
        hop_by_hop.extend_from_slice(&udp);
        for side in [Interface::Outside, Interface::Inside] {
            let code = instructions(&sharding, side);
            for packet in [
                ipv4(
                    1,
                    [192, 0, 2, 1, 203, 0, 113, 9],
                    0,
                    &[3, 1, 0, 0, 0, 0, 0, 0],
                ),
                ipv4(17, [192, 0, 2, 1, 203, 0, 113, 9], 0x0010, &udp),
                ipv6(0, [0xfd; 32], &hop_by_hop),
            ] {
                let queue = unplaced_queue(&sharding, &packet).expect("addresses");
                assert_eq!(run(&code, &packet), queue as u64, "{side:?} {packet:02x?}");
            }
            // What it cannot read goes to queue 0.
            for packet in [
                ipv4(17, [192, 0, 2, 1, 203, 0, 113, 9], 0, &udp[..1]),
                vec![0x45, 0, 0],
                vec![0x10; 40],
            ] {
                assert_eq!(run(&code, &packet), 0, "{side:?} {packet:02x?}");
            }
            // A flood of pings from many sources lands on every queue, not on one.
            let mut seen = [0usize; 4];
            for source in 0..=255u8 {
                let ping = ipv4(1, [198, 51, 100, source, 203, 0, 113, 9], 0, &[8; 8]);
                seen[run(&code, &ping) as usize] += 1;
            }
            assert!(seen.iter().all(|&n| n > 20), "{side:?}: {seen:?}");
        }
    }
}
