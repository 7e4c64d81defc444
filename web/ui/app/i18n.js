// The field app's words: Chinese (zh-CN) by default, English with `?lang=en` (kept on the phone).
// Every control's accessible name is its text in the current language.

const zh = {
  title: '监督 · 现场', setup: '设备登记', setup_hint: '请用管理员页面的二维码打开本应用，或手动输入设备号和令牌。',
  device: '设备号', token: '令牌', save: '保存', logout: '退出并清除本机数据', logout_confirm: '确定清除本机全部数据？未发送的内容将丢失。',
  tab_duty: '任务', tab_report: '上报', tab_lookup: '查询', tab_evidence: '取证', tab_settings: '设置',
  go_on_duty: '上岗', go_off_duty: '下岗', duty_on: '在岗', duty_off: '下岗', duty_busy: '任务中',
  connected: '已连接', connecting: '连接中', offline: '离线', waiting: '待发送', points: '个定位点', messages: '条消息',
  no_fix: '尚未定位', fix: '定位', accuracy: '精度', last_sent: '最近定位',
  offer: '新任务', distance: '距离', respond_in: '剩余', seconds: '秒', expired: '已超时',
  accept: '接受', decline: '拒绝', arrived: '已到达', complete: '完成', decline_reason: '拒绝原因', note: '处置说明',
  reason_busy: '正在处理其他事项', reason_far: '距离太远', reason_other: '其他',
  job: '当前任务', job_accepted: '已接受，前往现场', job_arrived: '已到达现场', withdrawn: '任务已撤回',
  no_job: '暂无任务', kind: '类别', text: '内容', plate: '车牌（可选）', photos: '照片', report: '上报',
  report_sent: '已上报，等待确认', report_acked: '已确认', need_fix: '需要先获得定位',
  kind_banquet: '违规吃喝', kind_official_car: '公车私用', kind_gift: '违规收送礼品', kind_other: '其他',
  lookup: '查询', lookup_kind: '查询类型', vehicle: '车辆', person: '人员', department: '部门', query: '查询内容',
  found: '查到', not_found: '未查到', candidates: '可能是', powers: '权力清单',
  take_photo: '拍照', evidence_hint: '拍照或录像，自动分块上传，断网后继续。', gallery: '已取证',
  st_queued: '排队中', st_uploading: '上传中', st_stored: '已存证', st_rejected: '被拒绝',
  sig_ok: '签名已验证', sig_bad: '签名无效', sig_unknown: '无法验证签名', receipt: '回执', ledger: '账本序号',
  language: 'English', lang_link: '?lang=en', interval: '定位间隔（秒）', notifications: '允许通知',
  screen_note: '网页应用在熄屏或切到后台时多数手机会停止定位；请保持本页在前台。',
};

const en = {
  title: 'Jiandu field', setup: 'Set up this phone', setup_hint: 'Open this app from the QR code on the admin page, or enter the device id and token by hand.',
  device: 'Device id', token: 'Token', save: 'Save', logout: 'Log out and wipe this phone', logout_confirm: 'Wipe everything on this phone? Anything not yet sent is lost.',
  tab_duty: 'Task', tab_report: 'Report', tab_lookup: 'Look up', tab_evidence: 'Evidence', tab_settings: 'Settings',
  go_on_duty: 'Go on duty', go_off_duty: 'Go off duty', duty_on: 'On duty', duty_off: 'Off duty', duty_busy: 'Busy',
  connected: 'Connected', connecting: 'Connecting', offline: 'Offline', waiting: 'Waiting to send', points: 'points', messages: 'messages',
  no_fix: 'No position yet', fix: 'Position', accuracy: 'accuracy', last_sent: 'Last fix',
  offer: 'New assignment', distance: 'Distance', respond_in: 'Answer within', seconds: 's', expired: 'Expired',
  accept: 'Accept', decline: 'Decline', arrived: 'Arrived', complete: 'Complete', decline_reason: 'Reason', note: 'Note',
  reason_busy: 'Busy with something else', reason_far: 'Too far away', reason_other: 'Other',
  job: 'Current assignment', job_accepted: 'Accepted: on the way', job_arrived: 'On site', withdrawn: 'The assignment was withdrawn',
  no_job: 'No assignment', kind: 'Kind', text: 'What happened', plate: 'Plate (optional)', photos: 'Photos', report: 'Report',
  report_sent: 'Reported, awaiting confirmation', report_acked: 'Confirmed', need_fix: 'A position is needed first',
  kind_banquet: 'Banquet', kind_official_car: 'Official car misuse', kind_gift: 'Gifts', kind_other: 'Other',
  lookup: 'Look up', lookup_kind: 'Look up', vehicle: 'Vehicle', person: 'Person', department: 'Department', query: 'Query',
  found: 'Found', not_found: 'Not found', candidates: 'Did you mean', powers: 'Powers',
  take_photo: 'Take photo', evidence_hint: 'Photos and videos upload in chunks and resume after going offline.', gallery: 'Sent evidence',
  st_queued: 'Queued', st_uploading: 'Uploading', st_stored: 'Stored', st_rejected: 'Rejected',
  sig_ok: 'Signature verified', sig_bad: 'Signature INVALID', sig_unknown: 'Signature not verifiable', receipt: 'Receipt', ledger: 'Ledger seq',
  language: '中文', lang_link: '?lang=zh', interval: 'Fix interval (s)', notifications: 'Allow notifications',
  screen_note: 'A web app stops locating on most phones when the screen is off or it is in the background: keep this page open.',
};

const param = new URLSearchParams(location.search).get('lang');
if (param) localStorage.setItem('jd-app-lang', param === 'en' ? 'en' : 'zh');
/** The current language: `en` or `zh`. */
export const lang = (param ?? localStorage.getItem('jd-app-lang')) === 'en' ? 'en' : 'zh';
document.documentElement.lang = lang === 'en' ? 'en' : 'zh-CN';

/** The word for `key` in the current language. */
export function t(key) {
  return (lang === 'en' ? en : zh)[key] ?? key;
}
