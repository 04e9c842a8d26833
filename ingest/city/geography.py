"""Guangzhou's 11 districts with some of their real streets (街道/镇), at approximate real
coordinates, each street split into grids (网格). Pure data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Street:
    code: str
    name_zh: str
    district: str
    lon: float
    lat: float


@dataclass(frozen=True, slots=True)
class Grid:
    code: str
    street: Street
    lon: float
    lat: float


# district code -> (name, [(street code, street name, lon, lat), ...])
DISTRICTS: dict[str, tuple[str, list[tuple[str, str, float, float]]]] = {
    "yuexiu": ("越秀区", [
        ("beijingjie", "北京街道", 113.270, 23.125), ("liurong", "六榕街道", 113.262, 23.133),
        ("dadong", "大东街道", 113.288, 23.127), ("huale", "华乐街道", 113.283, 23.140),
        ("kuangquan", "矿泉街道", 113.260, 23.160), ("dengfeng", "登峰街道", 113.292, 23.152),
    ]),
    "liwan": ("荔湾区", [
        ("shamian", "沙面街道", 113.243, 23.108), ("fengyuan", "逢源街道", 113.240, 23.124),
        ("duobao", "多宝街道", 113.245, 23.118), ("chongkou", "冲口街道", 113.229, 23.093),
        ("zhongnan", "中南街道", 113.205, 23.094),
    ]),
    "haizhu": ("海珠区", [
        ("pazhou", "琶洲街道", 113.366, 23.103), ("binjiang", "滨江街道", 113.290, 23.112),
        ("jiangnanzhong", "江南中街道", 113.270, 23.100), ("chigang", "赤岗街道", 113.330, 23.098),
        ("nanzhou", "南洲街道", 113.319, 23.078), ("huazhou", "华洲街道", 113.362, 23.080),
    ]),
    "tianhe": ("天河区", [
        ("linhe", "林和街道", 113.327, 23.146), ("shipai", "石牌街道", 113.339, 23.132),
        ("liede", "猎德街道", 113.332, 23.118), ("tianhenan", "天河南街道", 113.326, 23.135),
        ("wushan", "五山街道", 113.353, 23.157), ("tangxia", "棠下街道", 113.376, 23.137),
        ("zhuji", "珠吉街道", 113.426, 23.128),
    ]),
    "baiyun": ("白云区", [
        ("jingxi", "京溪街道", 113.330, 23.195), ("sanyuanli", "三元里街道", 113.262, 23.165),
        ("tonghe", "同和街道", 113.323, 23.200), ("jiahe", "嘉禾街道", 113.292, 23.219),
        ("renhe", "人和镇", 113.281, 23.338), ("taihe", "太和镇", 113.365, 23.300),
    ]),
    "huangpu": ("黄埔区", [
        ("huangpu_st", "黄埔街道", 113.447, 23.095), ("yuzhu", "鱼珠街道", 113.423, 23.104),
        ("luogang", "萝岗街道", 113.483, 23.180), ("yonghe", "永和街道", 113.561, 23.209),
        ("jiulong", "九龙镇", 113.544, 23.358),
    ]),
    "panyu": ("番禺区", [
        ("shiqiao", "市桥街道", 113.364, 22.938), ("zhongcun", "钟村街道", 113.312, 22.985),
        ("dashi", "大石街道", 113.305, 23.009), ("nancun", "南村镇", 113.387, 23.000),
        ("xiaoguwei", "小谷围街道", 113.395, 23.062), ("shawan", "沙湾街道", 113.342, 22.908),
    ]),
    "huadu": ("花都区", [
        ("xinhua", "新华街道", 113.220, 23.404), ("huacheng", "花城街道", 113.233, 23.390),
        ("xiuquan", "秀全街道", 113.199, 23.420), ("shiling", "狮岭镇", 113.153, 23.460),
    ]),
    "nansha": ("南沙区", [
        ("nansha_st", "南沙街道", 113.602, 22.776), ("huangge", "黄阁镇", 113.527, 22.826),
        ("dongchong", "东涌镇", 113.468, 22.872), ("zhujiang", "珠江街道", 113.575, 22.700),
    ]),
    "conghua": ("从化区", [
        ("jiekou", "街口街道", 113.587, 23.548), ("chengjiao", "城郊街道", 113.577, 23.574),
        ("wenquan", "温泉镇", 113.626, 23.634), ("taiping", "太平镇", 113.468, 23.453),
    ]),
    "zengcheng": ("增城区", [
        ("licheng", "荔城街道", 113.811, 23.291), ("zengjiang", "增江街道", 113.835, 23.288),
        ("xintang", "新塘镇", 113.612, 23.129), ("yongning", "永宁街道", 113.646, 23.176),
        ("zhucun", "朱村街道", 113.715, 23.247),
    ]),
}  # fmt: skip

GRIDS_PER_STREET = 4

# Hubs the scenarios know: railway stations (春运) and the Canton Fair complex (广交会).
STATIONS = ("sanyuanli", "zhongcun", "linhe")  # 广州站 (三元里), 广州南站 (钟村), 广州东站 (林和)
CANTON_FAIR = "pazhou"


def streets() -> list[Street]:
    return [
        Street(code, name, district, lon, lat)
        for district, (_, entries) in DISTRICTS.items()
        for code, name, lon, lat in entries
    ]


def grids() -> list[Grid]:
    """Each street's grids, placed a few hundred metres around the street's centre."""
    offsets = [(-0.004, -0.003), (0.004, -0.003), (-0.004, 0.003), (0.004, 0.003)]
    return [
        Grid(f"{s.code}-g{i + 1:02d}", s, round(s.lon + dx, 5), round(s.lat + dy, 5))
        for s in streets()
        for i, (dx, dy) in enumerate(offsets[:GRIDS_PER_STREET])
    ]
