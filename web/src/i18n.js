// Interface text in Chinese (default) and English; the choice is kept in localStorage.
const zh = {
  title: '监督 · 指挥台', login: '登录', logout: '退出', name: '用户名', password: '密码',
  wrong_login: '用户名或密码错误', rate_limited: '失败次数过多，请稍后再试', map: '实时地图', reports: '线索与派遣',
  lookup: '查询', audit: '审计', admin: '管理', api: '接口文档', forbidden: '您的角色无权访问此页面',
  available: '空闲', busy: '执勤中', off_duty: '下班', offline: '离线', stale: '失联', unknown: '未上报', revoked: '已注销',
  devices: '设备', shown: '显示', track_today: '今日轨迹', last_seen: '最后上报', staff: '人员编号', battery: '电量',
  speed: '速度', state: '状态', close: '关闭', all: '全部', new: '新线索', dispatching: '已派发', unassigned: '无人接单（已上报）',
  assigned: '处置中', completed: '已完成', cancelled: '已撤销', kind: '类别', text: '内容', lat: '纬度', lon: '经度',
  plate: '车牌', create_report: '新建线索', submit: '提交', time: '时间', status: '状态', origin: '来源', more: '更多',
  report: '线索', dispatch_nearest: '派最近的人', dispatch_to: '派给', cancel_report: '撤销线索', reassign: '改派',
  assignments: '派遣记录', timeline: '时间线', evidence: '证据', nearest_available: '最近的空闲人员', distance: '距离',
  device: '设备', actor: '操作人', note: '备注', hash: '哈希', receipt: '回执', custody: '保管链', size: '大小',
  no_evidence: '暂无证据', vehicle: '车辆', person: '人员', department: '部门', query: '查询内容', at: '时间点', search: '查询',
  found: '找到', not_found: '未找到', candidates: '候选', lookups: '查询审计', ledger: '账本', users: '用户',
  add_user: '添加用户', role: '角色', add_device: '添加设备', credentials_once: '凭据仅显示一次，请立即录入手机',
  revoke: '注销', confirm: '确定？', live: '实时', disconnected: '连接中断，正在重连…', loading: '加载中…', none: '无',
  dispatcher: '值班员', leader: '领导', auditor: '审计员', created: '创建时间', seq: '序号', subject: '对象',
  outcome: '结果', channel: '渠道', paths: '接口', method: '方法', description: '说明', extent: '数据范围',
  lang: 'English', error: '错误', offered: '已派发', accepted: '已接受', declined: '已拒绝', arrived: '已到达',
  expired: '已超时', needs: '所需人数',
};
const en = {
  title: 'Jiandu · Desk', login: 'Log in', logout: 'Log out', name: 'Name', password: 'Password',
  wrong_login: 'Wrong name or password', rate_limited: 'Too many failed logins; try again later', map: 'Live map',
  reports: 'Reports & dispatch', lookup: 'Look-up', audit: 'Audit', admin: 'Admin', api: 'API',
  forbidden: 'Your role may not open this page', available: 'Available', busy: 'Busy', off_duty: 'Off duty',
  offline: 'Offline', stale: 'Stale', unknown: 'Never reported', revoked: 'Revoked', devices: 'Devices',
  shown: 'shown', track_today: "Today's track", last_seen: 'Last seen', staff: 'Staff id', battery: 'Battery',
  speed: 'Speed', state: 'State', close: 'Close', all: 'All', new: 'New', dispatching: 'Offered',
  unassigned: 'Unassigned (escalated)', assigned: 'In progress', completed: 'Done', cancelled: 'Cancelled', kind: 'Kind',
  text: 'Text', lat: 'Latitude', lon: 'Longitude', plate: 'Plate', create_report: 'New report', submit: 'Submit',
  time: 'Time', status: 'Status', origin: 'Origin', more: 'More', report: 'Report', dispatch_nearest: 'Dispatch nearest',
  dispatch_to: 'Send', cancel_report: 'Cancel report', reassign: 'Reassign', assignments: 'Assignments',
  timeline: 'Timeline', evidence: 'Evidence', nearest_available: 'Nearest available', distance: 'Distance',
  device: 'Device', actor: 'Actor', note: 'Note', hash: 'Hash', receipt: 'Receipt', custody: 'Chain of custody',
  size: 'Size', no_evidence: 'No evidence yet', vehicle: 'Vehicle', person: 'Person', department: 'Department',
  query: 'Query', at: 'At', search: 'Search', found: 'Found', not_found: 'Not found', candidates: 'Candidates',
  lookups: 'Look-up audit', ledger: 'Ledger', users: 'Users', add_user: 'Add user', role: 'Role',
  add_device: 'Add device', credentials_once: 'Shown once: enter them into the phone now', revoke: 'Revoke',
  confirm: 'Are you sure?', live: 'Live', disconnected: 'Disconnected, reconnecting…', loading: 'Loading…', none: 'None',
  dispatcher: 'Dispatcher', leader: 'Leader', auditor: 'Auditor', created: 'Created', seq: 'Seq', subject: 'Subject',
  outcome: 'Outcome', channel: 'Channel', paths: 'Endpoints', method: 'Method', description: 'Description',
  extent: 'Data extent', lang: '中文', error: 'Error', offered: 'Offered', accepted: 'Accepted', declined: 'Declined',
  arrived: 'Arrived', expired: 'Expired', needs: 'Inspectors needed',
};

export let lang = localStorage.getItem('jd.lang') === 'en' ? 'en' : 'zh';

/** The text for `key` in the current language (the key itself when unknown). */
export function t(key) {
  const d = lang === 'en' ? en : zh;
  return d[key] ?? zh[key] ?? key;
}

/** Switches between Chinese and English. */
export function toggleLang() {
  lang = lang === 'en' ? 'zh' : 'en';
  localStorage.setItem('jd.lang', lang);
  document.documentElement.lang = lang === 'en' ? 'en' : 'zh-CN';
}
