//! Register offsets and bit fields of the 82540EM (8254x Software Developer's Manual, §13).
//! Offsets are byte offsets inside BAR 0.

// §13.4 general registers.
pub const CTRL: u32 = 0x0000;
pub const CTRL_DUP: u32 = 0x0004; // alias of CTRL on the 8254x
pub const STATUS: u32 = 0x0008;
pub const EECD: u32 = 0x0010;
pub const EERD: u32 = 0x0014;
pub const CTRL_EXT: u32 = 0x0018;
pub const FLA: u32 = 0x001c;
pub const MDIC: u32 = 0x0020;
pub const FCAL: u32 = 0x0028;
pub const FCAH: u32 = 0x002c;
pub const FCT: u32 = 0x0030;
pub const VET: u32 = 0x0038;
pub const ICR: u32 = 0x00c0;
pub const ITR: u32 = 0x00c4;
pub const ICS: u32 = 0x00c8;
pub const IMS: u32 = 0x00d0;
pub const IMC: u32 = 0x00d8;
pub const RCTL: u32 = 0x0100;
pub const FCTTV: u32 = 0x0170;
pub const TXCW: u32 = 0x0178;
pub const RXCW: u32 = 0x0180;
pub const TCTL: u32 = 0x0400;
pub const TIPG: u32 = 0x0410;
pub const TBT: u32 = 0x0448;
pub const AIT: u32 = 0x0458;
pub const LEDCTL: u32 = 0x0e00;
pub const PBA: u32 = 0x1000;
pub const FCRTL: u32 = 0x2160;
pub const FCRTH: u32 = 0x2168;
pub const RDBAL: u32 = 0x2800;
pub const RDBAH: u32 = 0x2804;
pub const RDLEN: u32 = 0x2808;
pub const RDH: u32 = 0x2810;
pub const RDT: u32 = 0x2818;
pub const RDTR: u32 = 0x2820;
pub const RXDCTL: u32 = 0x2828;
pub const RADV: u32 = 0x282c;
pub const RSRPD: u32 = 0x2c00;
pub const TXDMAC: u32 = 0x3000;
pub const TDBAL: u32 = 0x3800;
pub const TDBAH: u32 = 0x3804;
pub const TDLEN: u32 = 0x3808;
pub const TDH: u32 = 0x3810;
pub const TDT: u32 = 0x3818;
pub const TIDV: u32 = 0x3820;
pub const TXDCTL: u32 = 0x3828;
pub const TADV: u32 = 0x382c;
pub const TSPMT: u32 = 0x3830;
/// Statistics (§13.7): 0x4000..0x4100, all clear on read.
pub const STATS_START: u32 = 0x4000;
pub const STATS_END: u32 = 0x4100;
pub const RXCSUM: u32 = 0x5000;
pub const MTA: u32 = 0x5200;
pub const MTA_END: u32 = 0x5400;
pub const RA: u32 = 0x5400;
pub const RA_END: u32 = 0x5480;
pub const VFTA: u32 = 0x5600;
pub const VFTA_END: u32 = 0x5800;
pub const WUC: u32 = 0x5800;
pub const WUFC: u32 = 0x5808;
pub const WUS: u32 = 0x5810;
pub const MANC: u32 = 0x5820;
pub const IPAV: u32 = 0x5838;
pub const IP4AT: u32 = 0x5840;
pub const IP4AT_END: u32 = 0x5858;
pub const IP6AT: u32 = 0x5880;
pub const IP6AT_END: u32 = 0x5890;
pub const WUPL: u32 = 0x5900;
pub const WUPM: u32 = 0x5a00;
pub const WUPM_END: u32 = 0x5a80;
pub const FFLT: u32 = 0x5f00;
pub const FFLT_END: u32 = 0x5f20;
pub const FFMT: u32 = 0x9000;
pub const FFMT_END: u32 = 0x9400;
pub const FFVT: u32 = 0x9800;
pub const FFVT_END: u32 = 0x9c00;

/// Registers that are plain storage: the device keeps what the driver writes (§13 lists them
/// as read/write with no side effect the model needs).
pub fn is_plain(off: u32) -> bool {
    matches!(
        off,
        CTRL_EXT
            | FLA
            | FCAL
            | FCAH
            | FCT
            | VET
            | FCTTV
            | TXCW
            | RXCW
            | TIPG
            | TBT
            | AIT
            | LEDCTL
            | PBA
            | FCRTL
            | FCRTH
            | RXDCTL
            | RSRPD
            | TXDMAC
            | TXDCTL
            | TSPMT
            | RXCSUM
            | WUC
            | WUFC
            | WUS
            | MANC
            | IPAV
            | WUPL
    ) || (MTA..MTA_END).contains(&off)
        || (RA..RA_END).contains(&off)
        || (VFTA..VFTA_END).contains(&off)
        || (IP4AT..IP4AT_END).contains(&off)
        || (IP6AT..IP6AT_END).contains(&off)
        || (WUPM..WUPM_END).contains(&off)
        || (FFLT..FFLT_END).contains(&off)
        || (FFMT..FFMT_END).contains(&off)
        || (FFVT..FFVT_END).contains(&off)
}

// CTRL (§13.4.1).
pub const CTRL_FD: u32 = 1 << 0;
pub const CTRL_SLU: u32 = 1 << 6;
pub const CTRL_SPD_1000: u32 = 2 << 8;
pub const CTRL_RST: u32 = 1 << 26;
pub const CTRL_VME: u32 = 1 << 30;
pub const CTRL_PHY_RST: u32 = 1 << 31;

// STATUS (§13.4.2).
pub const STATUS_FD: u32 = 1 << 0;
pub const STATUS_LU: u32 = 1 << 1;
pub const STATUS_SPEED_1000: u32 = 2 << 6;
pub const STATUS_ASDV_1000: u32 = 2 << 8;

// EECD (§13.4.3).
pub const EECD_SK: u32 = 1 << 0;
pub const EECD_CS: u32 = 1 << 1;
pub const EECD_DI: u32 = 1 << 2;
pub const EECD_DO: u32 = 1 << 3;
pub const EECD_REQ: u32 = 1 << 6;
pub const EECD_GNT: u32 = 1 << 7;
pub const EECD_PRES: u32 = 1 << 8;
/// Bits the driver owns (clock, select, data in, request); the rest is device status.
pub const EECD_WRITABLE: u32 = EECD_SK | EECD_CS | EECD_DI | EECD_REQ | 0x30;

// EERD (§13.4.4).
pub const EERD_START: u32 = 1 << 0;
pub const EERD_DONE: u32 = 1 << 4;
pub const EERD_ADDR_SHIFT: u32 = 8;
pub const EERD_DATA_SHIFT: u32 = 16;

// MDIC (§13.4.7).
pub const MDIC_DATA_MASK: u32 = 0xffff;
pub const MDIC_REG_SHIFT: u32 = 16;
pub const MDIC_PHY_SHIFT: u32 = 21;
pub const MDIC_OP_WRITE: u32 = 1 << 26;
pub const MDIC_OP_READ: u32 = 2 << 26;
pub const MDIC_READY: u32 = 1 << 28;
pub const MDIC_INT_EN: u32 = 1 << 29;
pub const MDIC_ERROR: u32 = 1 << 30;

// Interrupt causes, ICR/ICS/IMS/IMC (§13.4.17-21).
pub const ICR_TXDW: u32 = 1 << 0;
pub const ICR_TXQE: u32 = 1 << 1;
pub const ICR_LSC: u32 = 1 << 2;
pub const ICR_RXSEQ: u32 = 1 << 3;
pub const ICR_RXDMT0: u32 = 1 << 4;
pub const ICR_RXO: u32 = 1 << 6;
pub const ICR_RXT0: u32 = 1 << 7;
pub const ICR_MDAC: u32 = 1 << 9;
/// Cause bits the 82540EM implements (the rest of ICR is reserved, reads 0).
pub const ICR_VALID: u32 = 0x0001_f6df;

// RCTL (§13.4.22).
pub const RCTL_EN: u32 = 1 << 1;
pub const RCTL_SBP: u32 = 1 << 2;
pub const RCTL_UPE: u32 = 1 << 3;
pub const RCTL_MPE: u32 = 1 << 4;
pub const RCTL_LPE: u32 = 1 << 5;
pub const RCTL_RDMTS_SHIFT: u32 = 8;
pub const RCTL_MO_SHIFT: u32 = 12;
pub const RCTL_BAM: u32 = 1 << 15;
pub const RCTL_BSIZE_SHIFT: u32 = 16;
pub const RCTL_BSEX: u32 = 1 << 25;
pub const RCTL_SECRC: u32 = 1 << 26;

// RDTR (§13.4.30): flush partial descriptor block.
pub const RDTR_FPD: u32 = 1 << 31;

// TCTL (§13.4.33).
pub const TCTL_EN: u32 = 1 << 1;

// RXCSUM (§13.4.39).
pub const RXCSUM_IPOFLD: u32 = 1 << 8;
pub const RXCSUM_TUOFLD: u32 = 1 << 9;

// RAH (§13.5.3).
pub const RAH_AV: u32 = 1 << 31;

/// Number of receive address registers.
pub const NUM_RA: usize = 16;

// Statistics (§13.7), as offsets.
pub const CRCERRS: u32 = 0x4000;
pub const MPC: u32 = 0x4010;
pub const PRC64: u32 = 0x405c;
pub const GPRC: u32 = 0x4074;
pub const BPRC: u32 = 0x4078;
pub const MPRC: u32 = 0x407c;
pub const GPTC: u32 = 0x4080;
pub const GORCL: u32 = 0x4088;
pub const GORCH: u32 = 0x408c;
pub const GOTCL: u32 = 0x4090;
pub const GOTCH: u32 = 0x4094;
pub const RNBC: u32 = 0x40a0;
pub const RUC: u32 = 0x40a4;
pub const ROC: u32 = 0x40ac;
pub const TORL: u32 = 0x40c0;
pub const TORH: u32 = 0x40c4;
pub const TOTL: u32 = 0x40c8;
pub const TOTH: u32 = 0x40cc;
pub const TPR: u32 = 0x40d0;
pub const TPT: u32 = 0x40d4;
pub const PTC64: u32 = 0x40d8;
pub const MPTC: u32 = 0x40f0;
pub const BPTC: u32 = 0x40f4;
pub const TSCTC: u32 = 0x40f8;
pub const TSCTFC: u32 = 0x40fc;

/// Reset values of the registers that do not reset to 0 (§13.4, "initial value").
pub fn reset_value(off: u32) -> u32 {
    match off {
        CTRL => CTRL_FD | CTRL_SLU | CTRL_SPD_1000,
        STATUS => STATUS_FD | STATUS_LU | STATUS_SPEED_1000 | STATUS_ASDV_1000,
        EECD => EECD_PRES,
        MDIC => MDIC_READY,
        VET => 0x8100,
        LEDCTL => 0x0706_8302,
        PBA => 0x0010_0030,
        RXCSUM => RXCSUM_IPOFLD | RXCSUM_TUOFLD,
        TIPG => 0x0060_2008,
        _ => 0,
    }
}
