"""Language codes: the one table from data sets' native codes to the ISO 639-1 codes of metric keys and reports.

Data sets keep their own codes in file and catalog names (`tatoeba/deu`, `flores200/deu_Latn/dev`,
`tatoeba_challenge/zho`); metric keys and reports use ISO 639-1 (`de`, `zh`), or the native code where a language
has no ISO 639-1 code (`yue`, `arq`). Leaf module: it imports nothing of distill.
"""

from __future__ import annotations

#: ISO 639-3 (individual and macrolanguage codes as the data sets use them) -> ISO 639-1
ISO_639_1 = {
    "afr": "af", "amh": "am", "ara": "ar", "arb": "ar", "aze": "az", "azj": "az", "bel": "be", "ben": "bn",
    "bos": "bs", "bre": "br", "bul": "bg", "cat": "ca", "ces": "cs", "cmn": "zh", "cor": "kw", "cym": "cy",
    "dan": "da", "deu": "de", "ell": "el", "eng": "en", "epo": "eo", "est": "et", "eus": "eu", "fao": "fo",
    "fas": "fa", "fin": "fi", "fra": "fr", "fry": "fy", "gla": "gd", "gle": "ga", "glg": "gl", "hau": "ha",
    "heb": "he", "hin": "hi", "hrv": "hr", "hun": "hu", "hye": "hy", "ido": "io", "ile": "ie", "ina": "ia",
    "ind": "id", "isl": "is", "ita": "it", "jav": "jv", "jpn": "ja", "kat": "ka", "kaz": "kk", "khm": "km",
    "kor": "ko", "kur": "ku", "lat": "la", "lit": "lt", "lvs": "lv", "mal": "ml", "mar": "mr", "mkd": "mk",
    "mon": "mn", "nld": "nl", "nno": "nn", "nob": "nb", "oci": "oc", "pes": "fa", "pol": "pl", "por": "pt",
    "ron": "ro", "rus": "ru", "slk": "sk", "slv": "sl", "spa": "es", "sqi": "sq", "srp": "sr", "swe": "sv",
    "swh": "sw", "tam": "ta", "tat": "tt", "tel": "te", "tgl": "tl", "tha": "th", "tuk": "tk", "tur": "tr",
    "uig": "ug", "ukr": "uk", "urd": "ur", "uzb": "uz", "vie": "vi", "xho": "xh", "yid": "yi", "yor": "yo",
    "zho": "zh", "zsm": "ms", "zul": "zu",
}

#: scripts kept in the ISO code where one language is written in two (FLORES zho_Hans / zho_Hant)
SCRIPT_VARIANTS = {"zho_Hant": "zh_Hant"}

STSB_LANGUAGES = ("de", "en", "es", "fr", "it", "ja", "nl", "pl", "pt", "ru", "zh")
XQUAD_LANGUAGES = ("ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh")
#: the LASER Tatoeba test set: 112 languages, each paired with English
TATOEBA_CODES = tuple(
    "afr amh ang ara arq arz ast awa aze bel ben ber bos bre bul cat cbk ceb ces cha cmn cor csb cym dan deu dsb dtp "
    "ell epo est eus fao fin fra fry gla gle glg gsw heb hin hrv hsb hun hye ido ile ina ind isl ita jav jpn kab kat "
    "kaz khm kor kur kzj lat lfn lit lvs mal mar max mhr mkd mon nds nld nno nob nov oci orv pam pes pms pol por ron "
    "rus slk slv spa sqi srp swe swg swh tam tat tel tgl tha tuk tur tzl uig ukr urd uzb vie war wuu xho yid yue "
    "zsm".split())
#: the Tatoeba Translation Challenge test sets paired with English (v2021-08-07)
TATOEBA_CHALLENGE_CODES = tuple(
    "ara ben bul ces deu ell fas fin fra heb hin hun ind ita jpn kor nld pol por ron rus spa swe tha tur ukr vie "
    "zho".split())
#: FLORES-200 languages in the shared copy (56; line i parallel across all)
FLORES_CODES = tuple(
    "afr_Latn amh_Ethi arb_Arab azj_Latn ben_Beng bul_Cyrl cat_Latn ces_Latn dan_Latn deu_Latn ell_Grek eng_Latn "
    "est_Latn eus_Latn fin_Latn fra_Latn hau_Latn heb_Hebr hin_Deva hrv_Latn hun_Latn hye_Armn ind_Latn ita_Latn "
    "jpn_Jpan kat_Geor kaz_Cyrl kor_Hang lit_Latn lvs_Latn mar_Deva nld_Latn nob_Latn pes_Arab pol_Latn por_Latn "
    "ron_Latn rus_Cyrl slk_Latn spa_Latn srp_Cyrl swe_Latn swh_Latn tam_Taml tel_Telu tgl_Latn tha_Thai tur_Latn "
    "ukr_Cyrl urd_Arab vie_Latn yor_Latn zho_Hans zho_Hant zsm_Latn zul_Latn".split())


def iso(code: str) -> str:
    """A native code (`deu`, `deu_Latn`, `cmn`, `de`) -> its ISO 639-1 code (`de`); codes without one stay."""
    if code in SCRIPT_VARIANTS:
        return SCRIPT_VARIANTS[code]
    base = code.split("_")[0]
    return ISO_639_1.get(base, base)


def native(lang: str, codes: tuple[str, ...]) -> str | None:
    """An ISO 639-1 code (or a native one) -> the code a data set with `codes` uses for it, or None.

    Several native codes may share an ISO code (Tatoeba `ara`, `arq`, `arz` are all Arabic): the one whose own
    ISO mapping is exact (a macrolanguage or standard variety listed in ISO_639_1) wins, in `codes` order.
    """
    if lang in codes:
        return lang
    matches = [c for c in codes if iso(c) == lang]
    return matches[0] if matches else None
